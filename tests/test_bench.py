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
                           json_path=path, duo=True, block_length=4, device="cpu",
                           progress=False)
    assert json.loads(path.read_text()) == rows
    names = [r["strategy"] for r in rows]
    assert names == [n for n, _ in bench.bench_strategies(L, 4, duo=True)]
    assert names[:2] == ["llada 1 token/step block=4", "greedy"]
    assert sum(n.startswith("duo") for n in names) == 3
    from transformers import AutoTokenizer

    from dllm_lesson.evaluate import wilson_interval

    tok = AutoTokenizer.from_pretrained(model_dir)
    needed = sum(len(keys) for _, keys, _ in bench.bench_prompts(tok, L, 2))
    for r in rows:
        assert set(r) == set(bench.KEYS)
        assert r["answer_length"] == L and r["n_prompts"] == 2 and r["seconds"] > 0
        # the interval is the Wilson interval of the facts stated out of those needed
        stated = round(r["accuracy"] * needed)
        assert r["accuracy"] == pytest.approx(stated / needed)
        assert r["accuracy_ci"] == pytest.approx(list(wilson_interval(stated, needed)))
    by = dict(zip(names, rows))
    # tokens per pass, by hand: L = 8 tokens in 8, 8, 8, 16, 32 passes
    assert [by[n]["tokens_per_nfe"] for n in ("llada 1 token/step block=4", "greedy",
                                              "duo steps=8", "duo steps=16",
                                              "duo steps=32")] == [1.0, 1.0, 1.0, 0.5, 0.25]
    base = by["llada 1 token/step block=4"]
    assert base["nfe"] == L and base["steps"] == L and base["block_length"] == 4
    assert base["cache"] is None and base["threshold"] is None
    assert by["greedy"]["nfe"] == L and by["greedy"]["speedup_vs_greedy"] == 1.0
    assert [by[f"duo steps={s}"]["nfe"] for s in (8, 16, 32)] == [8, 16, 32]
    dual = by["threshold 0.9 block=4 dual"]
    assert (dual["cache"], dual["threshold"], dual["block_length"]) == ("dual", 0.9, 4)
    assert 2 <= dual["nfe"] <= L                                # >= 1 step per block


def test_bench_row_arithmetic_on_scripted_timings(monkeypatch):
    """Speed-ups and tokens per pass from scripted run_row results, computed by hand: the
    first row is LLaDA's baseline (4 s), the second greedy (2 s), then threshold (0.5 s)."""
    script = iter([dict(nfe=8, seconds=4.0), dict(nfe=8, seconds=2.0),
                   dict(nfe=2, seconds=0.5)])

    def fake_run_row(model, tokenizer, prompts, L, options, repeats, batch_size):
        res = next(script)
        return dict(res, accuracy=0.5, accuracy_ci=(0.2, 0.8), exact=0.0,
                    answer_tokens_per_nfe=1.5, answers=[])

    monkeypatch.setattr(bench, "run_row", fake_run_row)
    monkeypatch.setattr(bench, "bench_prompts", lambda tok, L, n: [("p", ["k"], "r")] * n)
    monkeypatch.setattr(bench, "bench_strategies", lambda L, b, duo, full: [
        ("llada", dict(strategy="llada")), ("greedy", dict(strategy="greedy")),
        ("thr", dict(strategy="threshold", threshold=0.9, cache="dual"))])
    rows = bench.run_bench(model=object(), tokenizer=object(), lengths=(8,), n_prompts=3,
                           duo=False, progress=False)
    got = [(r["tokens_per_nfe"], r["speedup_vs_llada"], r["speedup_vs_greedy"])
           for r in rows]
    assert got == [(1.0, 1.0, 0.5), (1.0, 2.0, 1.0), (4.0, 8.0, 4.0)]
    assert [r["n_prompts"] for r in rows] == [3, 3, 3]
    assert rows[2]["accuracy_ci"] == [0.2, 0.8] and rows[2]["cache"] == "dual"


def test_bench_full_table_names():
    names = [n for n, _ in bench.bench_strategies(256, 32, full=True)]
    assert names[:2] == ["llada 1 token/step block=32", "greedy"]
    assert len(names) == len(set(names))
    assert "threshold 0.9 block=32 prefix" in names and "remask steps=128 block=32" in names
    assert sum(n.endswith(" dual") for n in names) == 20      # 5 thresholds x 4 blocks


def test_bench_duo_rows_on_another_model(model_dir):
    from dllm_lesson.loading import load_model

    model, tok = load_model(str(model_dir), device="cpu", backend="lesson")
    L = 32
    rows = bench.run_bench(model_name="masked", lengths=(L,), repeats=1, n_prompts=1,
                           model=model, tokenizer=tok, duo_model=str(model_dir),
                           block_length=32, progress=False)
    by = {r["strategy"]: r for r in rows}
    tag = f" [{model_dir.name}]"
    assert [by[f"duo steps={s}{tag}"]["nfe"] for s in (8, 16, 32)] == [8, 16, 32]
    # masked diffusion at the same forward passes (32 steps: the baseline itself)
    assert [by[f"llada steps={s} block=32"]["nfe"] for s in (8, 16)] == [8, 16]
    assert by["llada 1 token/step block=32"]["nfe"] == 32
    assert len(rows) == len(by) == 5 + 2 + 3        # blocks of 128, 256 -> 32: one row


def test_bench_row_counts_answer_tokens_and_facts(model_dir):
    """nfe is the mean over prompts; answer tokens per pass count the tokens before the
    end token only; facts are pooled over prompts."""
    from dllm_lesson.loading import load_model
    from dllm_lesson.sampling import answer_end, answer_text

    model, tok = load_model(str(model_dir), device="cpu", backend="lesson")
    L = 12
    prompts = bench.bench_prompts(tok, L, 3)
    options = dict(strategy="threshold", threshold=0.9, block_length=6, cache="dual")
    res = bench.run_row(model, tok, prompts, L, options, repeats=2, batch_size=2)
    last = [list(decode_steps(model, tok, p, L, **options))[-1] for p, *_ in prompts]
    assert res["nfe"] == pytest.approx(sum(s.nfe for s in last) / 3)
    assert res["answer_tokens_per_nfe"] == pytest.approx(
        sum(answer_end(tok, s.tokens) for s in last) / sum(s.nfe for s in last))
    assert res["answers"] == [answer_text(tok, s.tokens) for s in last]
    stated = sum(min(a.count(k), keys.count(k)) for (_, keys, _), a in
                 zip(prompts, res["answers"]) for k in set(keys))
    assert res["accuracy"] == pytest.approx(stated / sum(len(k) for _, k, _ in prompts))


def test_long_prompts_fill_the_answer_with_held_out_countries(model_dir, corpus):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = bench.long_prompts(tok, 64, 256)
    assert len(prompts) == 64 == len({p for p, *_ in prompts})
    held = {e.entity for e in corpus.heldout_entities if e.task == "describe"}
    sft_lists = {e.entity for e in corpus.sft if e.task == "describe_many"}
    for prompt, keys, reference in prompts:
        size = len(tok(reference, add_special_tokens=False).input_ids)
        assert 0.65 * 256 <= size <= 252
        countries = [line.split(" is a country")[0] for line in reference.splitlines()]
        assert len(keys) == 3 * len(countries)             # capital, continent, language
        assert sum(c in held for c in countries) >= 3
        assert "|".join(countries) not in sft_lists
        assert all(c in prompt for c in countries)
    assert bench.bench_prompts(tok, 256, 5) == prompts[:5]
    short = bench.bench_prompts(tok, 64, 5)                  # one country each
    assert all(len(keys) == 3 for _, keys, _ in short)


def test_best_parallel_picks_the_fastest_cached_row_within_one_point():
    rows = [dict(strategy="llada 1 token/step block=32", answer_length=256, accuracy=0.5,
                 cache=None, speedup_vs_llada=1.0),
            dict(strategy="a", answer_length=256, accuracy=0.495, cache="dual",
                 speedup_vs_llada=20.0),
            dict(strategy="b", answer_length=256, accuracy=0.48, cache="dual",
                 speedup_vs_llada=40.0),
            dict(strategy="c", answer_length=256, accuracy=0.6, cache=None,
                 speedup_vs_llada=30.0)]
    assert bench.best_parallel(rows)["strategy"] == "a"
    assert bench.best_parallel(rows[:1]) is None


def test_main_bench(model_dir, tmp_path, capsys):
    path = tmp_path / "rows.json"
    bench.main_bench(["--model", str(model_dir), "--lengths", "8", "--repeats", "1",
                      "--prompts", "1", "--block-length", "4", "--device", "cpu",
                      "--json", str(path)])
    out = capsys.readouterr().out
    rows = json.loads(path.read_text())
    assert len(rows) == len(bench.bench_strategies(8, 4)) == 6
    assert "greedy" in out and "ans/NFE" in out
    assert all(r["strategy"] in out for r in rows)
    with pytest.raises(SystemExit):
        bench.main_bench(["--model", str(model_dir), "--repeats", "0"])
