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
    assert sorted(done) == ["tiny-bert", "tiny-dllm", "tiny-duo"]
    for name in done:
        folder = dest / name
        assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
        card = (folder / "README.md").read_text()
        assert card.startswith(f"# {name}") and "python -m dllm_lesson build-models" in card
        assert json.loads((folder / "metrics.json").read_text()) == json.loads(
            json.dumps(done[name]))                           # keys become strings
    assert "heldout_entities_duo_32steps" in done["tiny-duo"]
    assert "heldout_entities_greedy" in done["tiny-dllm"]
    # every stage of the recipe trained (2 steps each) and logged
    for stages in build.recipe(work, 0.001).values():
        for cfg in stages:
            rows = (work / cfg.output_dir.split("/")[-1] / "metrics.jsonl").read_text()
            assert json.loads(rows.splitlines()[-1])["step"] == 2
    capsys.readouterr()

    # --reuse: tiny-duo again; tiny-bert and tiny-dllm are only loaded, the last duo
    # stage's finished output is loaded and the first round is skipped
    first_round = work / "tiny-duo-a" / "metrics.jsonl"
    before = first_round.stat().st_mtime_ns
    build.build_models(("tiny-duo",), work_dir=work, dest=dest, scale=0.001, eval_limit=2,
                       reuse=True)
    out = capsys.readouterr().out
    assert f"reusing {work / 'tiny-dllm'}" in out
    assert f"reusing {work / 'tiny-duo'}" in out
    assert first_round.stat().st_mtime_ns == before
    card = (dest / "tiny-duo" / "README.md").read_text()
    assert "2 steps x batch 16, seq 128, lr 0.0005 (stage reused from an earlier build: " \
        "tiny-duo-a)" in card                           # the skipped round, from the recipe
    assert card.count("stage reused") == 2 and "final loss" not in card
