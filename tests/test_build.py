"""``python -m dllm_lesson build-models`` end to end at a tiny scale (2 steps a stage):
every stage runs through the training core, the folders ship with cards, ``--reuse``
skips finished stages, resumes an interrupted one and refuses one of another corpus."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from dllm_lesson import build, cards, data
from dllm_lesson.training import train


def test_build_models_smoke(tmp_path, capsys):
    torch.set_num_threads(1)
    work, dest = tmp_path / "work", tmp_path / "dest"
    done = build.build_models(work_dir=work, dest=dest, scale=0.001, eval_limit=2)
    assert sorted(done) == ["tiny-ar", "tiny-bert", "tiny-dllm", "tiny-duo", "tiny-duo-dcd"]
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
    assert "heldout_entities_ar" in done["tiny-ar"]           # decoded by strategy "ar"
    assert "mask_ratio_token_accuracy" not in done["tiny-ar"]
    ar_card = (dest / "tiny-ar" / "README.md").read_text()
    assert "AutoModelForCausalLM" in ar_card and "`ar` on offline v2 text" in ar_card
    # each stage's record names the corpus it trained on
    fp = build.corpus_fingerprint(build.recipe(work)["tiny-dllm"][0])
    assert fp == data.build_corpus(version=2).fingerprint()
    assert f"corpus {fp}" in (dest / "tiny-dllm" / "README.md").read_text()
    # every stage of the recipe trained (2 or 3 steps) and logged
    for stages in build.recipe(work, 0.001).values():
        for cfg in stages:
            rows = (work / cfg.output_dir.split("/")[-1] / "metrics.jsonl").read_text()
            assert json.loads(rows.splitlines()[-1])["step"] == cfg.max_steps
    capsys.readouterr()

    # --reuse: tiny-duo-dcd again; tiny-dllm and tiny-duo are only loaded (tiny-duo, the
    # teacher, is not retrained), the finished distillation stage is loaded
    duo_run = work / "tiny-duo" / "metrics.jsonl"
    before = duo_run.stat().st_mtime_ns
    record = work / "tiny-duo-dcd" / build.RUN_RECORD
    kept = json.loads(record.read_text())
    record.write_text(json.dumps(dict(kept, finished=False, tokens=None)))  # no figures
    build.build_models(("tiny-duo-dcd",), work_dir=work, dest=dest, scale=0.001,
                       eval_limit=2, reuse=True)
    out = capsys.readouterr().out
    assert f"reusing {work / 'tiny-duo'}" in out
    assert f"reusing {work / 'tiny-duo-dcd'}" in out
    assert duo_run.stat().st_mtime_ns == before
    card = (dest / "tiny-duo-dcd" / "README.md").read_text()
    # the reused stage left no finished record: its recipe only
    assert "`dcd` on offline v2 chat: 2 steps x batch 16, seq 128, lr 0.0002 (stage reused " in card
    assert card.count("stage reused") == 1 and card.count("final loss") == 0


def test_reuse_refuses_another_corpus_and_resumes_an_interrupted_stage(tmp_path, capsys):
    torch.set_num_threads(1)
    work, dest = tmp_path / "work", tmp_path / "dest"
    build.build_models(("tiny-bert",), work_dir=work, dest=dest, scale=0.002, eval_limit=2)
    record = work / "tiny-bert" / build.RUN_RECORD
    rec = json.loads(record.read_text())
    assert rec["corpus"] == data.build_corpus(version=2).fingerprint() and rec["finished"]
    # a stage trained on another corpus is refused, naming the stage
    record.write_text(json.dumps(dict(rec, corpus="0123456789abcdef")))
    with pytest.raises(build.StaleStage, match="stage tiny-bert .* corpus 0123456789abcdef"):
        build.build_models(("tiny-bert",), work_dir=work, dest=dest, scale=0.002,
                           eval_limit=2, reuse=True)
    record.unlink()                                       # a stage of unknown origin too
    with pytest.raises(build.StaleStage, match="no build record"):
        build.build_models(("tiny-bert",), work_dir=work, dest=dest, scale=0.002,
                           eval_limit=2, reuse=True)
    # the command line says it in one line
    with pytest.raises(SystemExit):
        build.main_build(["--models", "tiny-bert", "--work-dir", str(work), "--dest",
                          str(dest), "--scale", "0.002", "--eval-limit", "2", "--reuse"])
    assert "no build record" in capsys.readouterr().err

    # an interrupted stage (a checkpoint, no final weights) resumes with --reuse
    cfg = build.recipe(work, 0.002)["tiny-bert"][0]
    shutil.rmtree(work / "tiny-bert")
    train(dataclasses.replace(cfg, max_steps=2, save_every=2))   # "killed" after step 2
    (work / "tiny-bert" / "model.safetensors").unlink()
    record.write_text(json.dumps({"corpus": rec["corpus"], "seconds": 100.0,
                                  "finished": False}))
    capsys.readouterr()
    build.build_models(("tiny-bert",), work_dir=work, dest=dest, scale=0.002,
                       eval_limit=2, reuse=True)
    assert "resuming" in capsys.readouterr().out
    steps = [json.loads(x)["step"] for x in
             (work / "tiny-bert" / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] <= 2 and steps[-1] == cfg.max_steps > 2
    rec = json.loads(record.read_text())
    assert rec["finished"] and rec["resumed"] and rec["seconds"] > 100.0


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
    card = cards.model_card("m", [], [], {"a": 1, "b": {"x": 0.5}}, 10, how="`build`")
    (tmp_path / "README.md").write_text(card)
    (tmp_path / "metrics.json").write_text(json.dumps({"a": 1, "b": {"x": 0.5}}))
    cards.update_card(tmp_path, {"b": {"x": 0.75}, "c": {0.5: 0.25}}, "`eval --x`")
    cards.update_card(tmp_path, {"c": {0.5: 0.5}}, "`eval --x`")
    merged = json.loads((tmp_path / "metrics.json").read_text())
    assert merged == {"a": 1, "b": {"x": 0.75}, "c": {"0.5": 0.5}}
    text = (tmp_path / "README.md").read_text()
    assert text.count("- `build`") == 1 and text.count("- `eval --x`") == 1
    assert text.index("- `build`") < text.index("- `eval --x`") < text.index('"c"')
    assert json.loads(text.split("```")[1]) == merged


def test_build_on_another_corpus_version_refuses_the_old_stages(tmp_path):
    """``--corpus-version 3`` trains every stage on v3, and --reuse will not pick up a
    stage built on v2."""
    torch.set_num_threads(1)
    assert {c.corpus_version for stages in build.recipe(tmp_path, 0.002, 3).values()
            for c in stages} == {3}
    work, dest = tmp_path / "work", tmp_path / "dest"
    build.build_models(("tiny-bert",), work_dir=work, dest=dest, scale=0.002, eval_limit=2)
    with pytest.raises(build.StaleStage, match=r"stage tiny-bert .* now trains on corpus v3"):
        build.build_models(("tiny-bert",), work_dir=work, dest=dest, scale=0.002,
                           eval_limit=2, reuse=True, corpus_version=3)
    with pytest.raises(SystemExit):
        build.main_build(["--models", "tiny-bert", "--corpus-version", "4"])
