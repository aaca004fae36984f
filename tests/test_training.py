"""The training core: exact resume, NaN stop, bad rows, config checks, the root scripts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dllm_lesson import training
from dllm_lesson.training import TrainConfig, TrainingDiverged, read_metrics, train

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=2, global_attn_every_n_layers=2, local_attention=16)


def small_cfg(out, **kw):
    base = dict(objective="llada", model="scratch", model_config=SMALL, data="chat",
                seq_len=96, batch_size=4, lr=3e-3, warmup_steps=2, max_steps=6,
                fill_max=8, log_every=1, save_every=3, output_dir=str(out), progress=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("objective,data,text_mix", [
    ("llada", "chat", 0.5), ("mlm", "text", 0.0), ("duo", "chat", 0.3)])
def test_resume_is_exact(tmp_path, objective, data, text_mix):
    """Stopped after 3 steps and rerun on the same output dir, a run logs the same later
    losses as an uninterrupted one (CPU, within 1e-4)."""
    kw = dict(objective=objective, data=data, text_mix=text_mix)
    train(small_cfg(tmp_path / "full", **kw))

    def crash(rec):  # the run dies after logging step 4, whose checkpoint never came
        if rec["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_cfg(tmp_path / "part", **kw), callback=crash)
    assert training.latest_checkpoint(tmp_path / "part").name == "step-3"
    train(small_cfg(tmp_path / "part", **kw))
    a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "full")}
    b = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "part")}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]   # no duplicated or lost lines
    for step in (4, 5, 6):
        assert abs(a[step] - b[step]) <= 1e-4, (step, a[step], b[step])
    assert len({round(v, 6) for v in a.values()}) > 1     # the loss really moves


def test_resume_differs_without_state(tmp_path):
    """Control for the test above: a fresh run with another seed logs other losses."""
    train(small_cfg(tmp_path / "a", max_steps=3))
    train(small_cfg(tmp_path / "b", max_steps=3, seed=1))
    a = [r["loss"] for r in read_metrics(tmp_path / "a")]
    b = [r["loss"] for r in read_metrics(tmp_path / "b")]
    assert max(abs(x - y) for x, y in zip(a, b)) > 1e-3


def test_outputs_hf_format_and_metrics(tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    res = train(small_cfg(tmp_path / "run", max_steps=2))
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "run")
    tok = AutoTokenizer.from_pretrained(tmp_path / "run")
    assert tok.chat_template and tok.mask_token == "[MASK]"
    ids = torch.tensor([[2, 5, 4, 3]])
    assert model(input_ids=ids).logits.shape == (1, 4, len(tok))
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    assert all({"step", "loss", "lr", "tokens_per_s"} <= set(r) for r in rows)
    assert res["steps"] == 2 and res["tokens"] > 0


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = small_cfg(tmp_path / "run", max_steps=6, save_every=2)
    real = training.step_loss

    def poisoned(cfg_, model, batch, step, *a, **k):
        loss = real(cfg_, model, batch, step, *a, **k)
        return loss * float("nan") if step == 4 else loss

    monkeypatch.setattr(training, "step_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="step 5"):
        train(cfg)
    last = training.latest_checkpoint(tmp_path / "run")
    assert last is not None and last.name == "step-4"
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == 4
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]
    assert not (tmp_path / "run" / "model.safetensors").exists()  # no NaN model exported


def test_bad_rows_are_skipped_and_counted(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "What is the capital of France?"},
                      {"role": "assistant", "content": "The capital of France is Paris."}]},
        {"messages": [{"role": "user", "content": "no answer here"}]},          # no assistant
        {"messages": [{"role": "user", "content": "long " * 200},
                      {"role": "assistant", "content": "too long"}]},            # > seq_len
        {"messages": [{"role": "user", "content": 3}, {"content": None}]},       # not text
        {"messages": "not a list"},
    ] * 4
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = train(small_cfg(tmp_path / "run", dataset=str(data), max_steps=3, batch_size=5))
    # 3 steps x 5 rows from a shuffled 20-row table with 16 bad rows: most are skipped
    assert res["skipped_rows"] >= 5
    logged = read_metrics(tmp_path / "run")[-1]["skipped_rows"]
    assert logged == res["skipped_rows"] and logged > 0


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"lr": 1e-3, "learning_rate": 1})
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="ar")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(small_cfg(tmp_path / "r1", dataset=str(tmp_path / "missing.jsonl")))
    (tmp_path / "plain.jsonl").write_text('{"text": "hello"}\n')
    with pytest.raises(ValueError, match="no 'messages' column"):
        train(small_cfg(tmp_path / "r2", dataset=str(tmp_path / "plain.jsonl")))
    # an output dir holding a checkpoint of a different config: refused, nothing lost
    train(small_cfg(tmp_path / "r3", max_steps=3))
    before = sorted(p.name for p in (tmp_path / "r3" / "checkpoints").iterdir())
    with pytest.raises(ValueError, match="different config"):
        train(small_cfg(tmp_path / "r3", max_steps=6, lr=1e-2))
    assert sorted(p.name for p in (tmp_path / "r3" / "checkpoints").iterdir()) == before


def test_model_without_mask_token(tmp_path, tiny_modernbert_dir):
    src = tmp_path / "nomask"
    shutil.copytree(tiny_modernbert_dir, src)
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    tok.mask_token = None
    model = AutoModelForMaskedLM.from_pretrained(src)
    with pytest.raises(ValueError, match="no mask token"):
        train(small_cfg(tmp_path / "run"), model=model, tokenizer=tok)


def _script_env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return env


@pytest.mark.parametrize("script", ["train_dllm.py", "train_flowlm.py"])
def test_script_help(script):
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True,
                         text=True, env=_script_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--preset" in out.stdout and "--output-dir" in out.stdout
    assert "--max-steps" in out.stdout


def test_script_rejects_bad_option(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "train_dllm.py"), "--preset", "tiny",
                          "--lr", "fast"], capture_output=True, text=True,
                         env=_script_env(), timeout=120)
    assert out.returncode != 0 and "--lr" in out.stderr


def test_flowlm_script_resume_is_exact(tmp_path):
    """``./train_flowlm.py --preset tiny`` (Duo) stopped after its step-2 checkpoint and
    started again on the same output dir logs the uninterrupted run's later losses."""
    def run(out):
        cmd = [sys.executable, str(ROOT / "train_flowlm.py"), "--preset", "tiny",
               "--max-steps", "4", "--batch-size", "4", "--seq-len", "128",
               "--save-every", "2", "--keep-checkpoints", "2", "--log-every", "1",
               "--output-dir", str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=_script_env(),
                             timeout=600)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]

    run(tmp_path / "full")
    run(tmp_path / "part")
    # the state a crash between the step-2 and step-4 checkpoints leaves behind: the
    # metrics of steps 3-4 were written; their checkpoint, the "latest" pointer to it and
    # the final model were not
    part = tmp_path / "part"
    shutil.rmtree(part / "checkpoints" / "step-4")
    (part / "checkpoints" / "latest").write_text("step-2")
    (part / "model.safetensors").unlink()
    assert training.latest_checkpoint(part).name == "step-2"
    run(part)
    a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "full")}
    b = {r["step"]: r["loss"] for r in read_metrics(part)}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]           # steps 3-4 logged once
    for step in (3, 4):
        assert abs(a[step] - b[step]) <= 1e-4, (step, a[step], b[step])
    assert (part / "model.safetensors").exists()
    assert len({round(v, 6) for v in a.values()}) > 1


def test_torchrun_two_cpu_processes(tmp_path):
    """``torchrun --standalone --nproc_per_node=2 train_dllm.py --preset tiny`` on CPUs
    (gloo): both ranks train, rank 0 writes metrics and the model."""
    from dllm_lesson.loading import model_path

    try:
        model_path("tiny-bert")
    except Exception as e:  # pragma: no cover - shipped models are part of the package
        pytest.fail(f"shipped tiny-bert missing: {e}")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", str(ROOT / "train_dllm.py"), "--preset", "tiny",
           "--max-steps", "2", "--batch-size", "2", "--seq-len", "256",
           "--save-every", "1", "--log-every", "1", "--output-dir", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_script_env(), timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert (out / "model.safetensors").exists()
    state = json.loads((out / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert len(state["data"]) == 2                       # one data position per rank
    # each step consumed one global batch: 2 ranks x batch 2 (ranks take disjoint slices)
    assert [d["chat"]["cursor"] for d in state["data"]] == [8, 8]
