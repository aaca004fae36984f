"""``python -m dllm_lesson build-models`` end to end at a tiny scale (2 steps a stage):
every stage runs through the training core, the folders ship with cards, ``--reuse``
skips finished stages."""

from __future__ import annotations

import json

import torch

from dllm_lesson import build


def test_build_models_smoke(tmp_path, capsys):
    torch.set_num_threads(1)
    work, dest = tmp_path / "work", tmp_path / "dest"
    done = build.build_models(work_dir=work, dest=dest, scale=0.001, eval_limit=2)
    assert sorted(done) == ["tiny-bert", "tiny-dllm", "tiny-duo", "tiny-duo-dcd"]
    for name in done:
        folder = dest / name
        assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
        card = (folder / "README.md").read_text()
        assert card.startswith(f"# {name}") and "python -m dllm_lesson build-models" in card
        assert json.loads((folder / "metrics.json").read_text()) == json.loads(
            json.dumps(done[name]))                           # keys become strings
    assert "heldout_entities_duo_32steps" in done["tiny-duo"]
    assert "heldout_entities_duo_32steps" in done["tiny-duo-dcd"]
    assert "heldout_entities_greedy" in done["tiny-dllm"]
    # every stage of the recipe trained (2 steps each) and logged
    for stages in build.recipe(work, 0.001).values():
        for cfg in stages:
            rows = (work / cfg.output_dir.split("/")[-1] / "metrics.jsonl").read_text()
            assert json.loads(rows.splitlines()[-1])["step"] == 2
    capsys.readouterr()

    # --reuse: tiny-duo-dcd again; tiny-dllm and tiny-duo are only loaded (tiny-duo, the
    # teacher, is not retrained), the finished distillation stage is loaded
    duo_run = work / "tiny-duo" / "metrics.jsonl"
    before = duo_run.stat().st_mtime_ns
    (work / "tiny-duo-dcd" / build.RUN_RECORD).unlink()     # a stage that left no record
    build.build_models(("tiny-duo-dcd",), work_dir=work, dest=dest, scale=0.001,
                       eval_limit=2, reuse=True)
    out = capsys.readouterr().out
    assert f"reusing {work / 'tiny-duo'}" in out
    assert f"reusing {work / 'tiny-duo-dcd'}" in out
    assert duo_run.stat().st_mtime_ns == before
    card = (dest / "tiny-duo-dcd" / "README.md").read_text()
    # the reused stage left no record: its recipe only
    assert "`dcd` on offline chat: 2 steps x batch 16, seq 128, lr 0.0002 (stage reused " in card
    assert card.count("stage reused") == 1 and card.count("final loss") == 0


def test_build_ships_the_course_chat_template(tmp_path):
    """A stage reused from before the template changed still ships the course's one."""
    from dllm_lesson.tokenizer import CHAT_TEMPLATE

    torch.set_num_threads(1)
    work, dest = tmp_path / "work", tmp_path / "dest"
    build.build_models(("tiny-bert",), work_dir=work, dest=dest, scale=0.001, eval_limit=2)
    (work / "tiny-bert" / "chat_template.jinja").write_text("{{ 'an older template' }}")
    build.build_models(("tiny-bert",), work_dir=work, dest=dest, scale=0.001, eval_limit=2,
                       reuse=True)
    assert (dest / "tiny-bert" / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert all(cfg.chat_template == "course" for stages in build.recipe(work).values()
               for cfg in stages)


def test_update_card_merges_rows_and_lists_commands(tmp_path):
    """``eval --update-card`` adds its rows to a card: a row of the same name is replaced,
    the others stay, and each measuring command is listed once."""
    card = build.model_card("m", [], [], {"a": 1, "b": {"x": 0.5}}, 10, how="`build`")
    (tmp_path / "README.md").write_text(card)
    (tmp_path / "metrics.json").write_text(json.dumps({"a": 1, "b": {"x": 0.5}}))
    build.update_card(tmp_path, {"b": {"x": 0.75}, "c": {0.5: 0.25}}, "`eval --x`")
    build.update_card(tmp_path, {"c": {0.5: 0.5}}, "`eval --x`")
    merged = json.loads((tmp_path / "metrics.json").read_text())
    assert merged == {"a": 1, "b": {"x": 0.75}, "c": {"0.5": 0.5}}
    text = (tmp_path / "README.md").read_text()
    assert text.count("- `build`") == 1 and text.count("- `eval --x`") == 1
    assert text.index("- `build`") < text.index("- `eval --x`") < text.index('"c"')
    assert json.loads(text.split("```")[1]) == merged
