"""``dllm_lesson.bench`` on a random tiny model: row keys and consistency (no timings)."""

from __future__ import annotations

import json

import pytest
import torch

from dllm_lesson import bench
from dllm_lesson.sampling import decode_steps

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from dllm_lesson.tokenizer import build_tokenizer

    folder = tmp_path_factory.mktemp("tiny-random")
    tok = build_tokenizer(folder)
    conf = ModernBertConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=512, local_attention=16,
        global_attn_every_n_layers=2, initializer_range=0.5, pad_token_id=0,
        bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3)
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(conf)
    with torch.no_grad():
        model.decoder.bias[tok.mask_token_id] = -1e4
    model.save_pretrained(folder)
    return folder


def test_bench_rows(model_dir, tmp_path):
    path = tmp_path / "bench.json"
    L = 8
    rows = bench.run_bench(str(model_dir), lengths=(L,), repeats=1, n_prompts=2,
                           json_path=path, duo=True, block_length=4, device="cpu")
    assert json.loads(path.read_text()) == rows
    names = [r["strategy"] for r in rows]
    assert names == [n for n, _ in bench.bench_strategies(L, 4, duo=True)]
    assert len(names) == 11 and names[0] == "greedy"
    assert sum(n.startswith("duo") for n in names) == 3
    for r in rows:
        assert set(r) == set(bench.KEYS)
        assert r["answer_length"] == L
        assert r["tokens_per_nfe"] == pytest.approx(L / r["nfe"])
        assert r["speedup_vs_greedy"] == pytest.approx(rows[0]["seconds"] / r["seconds"])
        assert 0.0 <= r["accuracy"] <= 1.0 and r["seconds"] > 0
    by = dict(zip(names, rows))
    assert by["greedy"]["nfe"] == L and by["greedy"]["speedup_vs_greedy"] == 1.0
    assert by["llada steps=4 block=4"]["nfe"] == 4
    assert by["llada steps=2 block=4"]["nfe"] == 2              # at least one per block
    assert [by[f"duo steps={s}"]["nfe"] for s in (8, 16, 32)] == [8, 16, 32]
    assert by["llada steps=8 block=4"]["nfe"] == 8   # masked at duo's NFE (<= L only)
    for cache in ("", " prefix", " dual"):                    # >= 1 step per block
        assert 2 <= by[f"threshold 0.9 block=4{cache}"]["nfe"] <= L


def test_bench_duo_rows_on_another_model(model_dir):
    from dllm_lesson.loading import load_model

    model, tok = load_model(str(model_dir), device="cpu", backend="lesson")
    L = 32
    rows = bench.run_bench(model_name="masked", lengths=(L,), repeats=1, n_prompts=1,
                           model=model, tokenizer=tok, duo_model=str(model_dir),
                           block_length=32)
    by = {r["strategy"]: r for r in rows}
    tag = f" [{model_dir.name}]"
    assert [by[f"duo steps={s}{tag}"]["nfe"] for s in (8, 16, 32)] == [8, 16, 32]
    # masked diffusion at the same forward passes; steps=8 and 16 were already rows
    assert [by[f"llada steps={s} block=32"]["nfe"] for s in (8, 16, 32)] == [8, 16, 32]
    assert len(rows) == len(by) == 7 + 1 + 3


def test_bench_nfe_is_the_mean_over_prompts(model_dir):
    from dllm_lesson.loading import load_model

    model, tok = load_model(str(model_dir), device="cpu", backend="lesson")
    L = 12
    rows = bench.run_bench(model_name="x", lengths=(L,), repeats=2, n_prompts=3,
                           model=model, tokenizer=tok, duo=False, block_length=6)
    assert len(rows) == 7
    prompts = bench.bench_prompts(tok, L, 3)
    options = dict(bench.bench_strategies(L, 6))["threshold 0.9 block=6 dual"]
    nfes = [list(decode_steps(model, tok, p, L, **options))[-1].nfe for p, *_ in prompts]
    row = rows[[r["strategy"] for r in rows].index("threshold 0.9 block=6 dual")]
    assert row["nfe"] == pytest.approx(sum(nfes) / len(nfes))


def test_bench_prompts_fit_the_answer(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    for L, task_words in ((64, 1), (256, 3)):   # one country; lists of 3 to 6
        prompts = bench.bench_prompts(tok, L, 5)
        assert len(prompts) == 5
        for prompt, keys, reference in prompts:
            assert len(keys) >= 3 * task_words     # capital, continent, language each
            assert len(tok(reference, add_special_tokens=False).input_ids) < L
    long_rows = bench.bench_prompts(tok, 256, 100)
    assert all("these countries" in p for p, *_ in long_rows)


def test_main_bench(model_dir, tmp_path, capsys):
    path = tmp_path / "rows.json"
    bench.main_bench(["--model", str(model_dir), "--lengths", "8", "--repeats", "1",
                      "--prompts", "1", "--block-length", "4", "--device", "cpu",
                      "--json", str(path)])
    out = capsys.readouterr().out
    rows = json.loads(path.read_text())
    assert len(rows) == 7 and "greedy" in out and "tok/NFE" in out
    assert all(r["strategy"] in out for r in rows)
    with pytest.raises(SystemExit):
        bench.main_bench(["--model", str(model_dir), "--repeats", "0"])
