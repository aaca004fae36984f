"""``eval`` on corpus v2: the open-ended split (scored for consistency), the reversal split,
the consistency curve against tokens per forward pass, and a causal model's table."""

from __future__ import annotations

import json

import pytest

from dllm_lesson import data, evaluate, loading
from dllm_lesson.claims import wilson_interval
from dllm_lesson.facts import COUNTRIES

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=2, global_attn_every_n_layers=2, local_attention=16)


@pytest.fixture(scope="module")
def tiny_dllm():
    from dllm_lesson.loading import load_model

    return load_model("tiny-dllm", device="cpu", backend="lesson")


def test_v2_splits_load_with_their_tasks():
    corpus = data.build_corpus(version=2)
    for split, tasks in [("open_ended", set(data.OPEN_ENDED_TASKS)),
                         ("reversal_forward", {"capital"}),
                         ("reversal_backward", {"country_of_capital"})]:
        rows = evaluate.held_out_examples(split, version=2)
        assert rows == getattr(corpus, split) and {r.task for r in rows} == tasks
        some = evaluate.held_out_examples(split, limit=8, version=2)
        assert len(some) == 8 and all(r in rows for r in some)
    assert evaluate.EVAL_SPLITS[2] == tuple(s for s in data.SPLITS_V2
                                            if s not in ("pretrain", "sft"))
    # forward and backward ask about the same facts
    fw = {r.entity for r in evaluate.held_out_examples("reversal_forward", version=2)}
    bw = {r.entity for r in evaluate.held_out_examples("reversal_backward", version=2)}
    assert fw == bw and len(fw) == data.N_REVERSAL
    two = evaluate.held_out_examples("open_ended", tasks="two_countries", version=2)
    assert two and {r.task for r in two} == {"two_countries"}


def test_unknown_split_or_task_names_the_known_ones():
    with pytest.raises(ValueError, match="'open_ended' needs corpus v2.*heldout_entities"):
        evaluate.held_out_examples("open_ended", version=1)
    with pytest.raises(ValueError, match="unknown split 'reversal' of corpus v2: .*"
                                         "open_ended, reversal_forward, reversal_backward"):
        evaluate.held_out_examples("reversal", version=2)
    with pytest.raises(ValueError, match="unknown task 'pair_capitals' in open_ended: "
                                         r"choose from \['pair_capital', 'pair_sound', "
                                         r"'two_countries'\]"):
        evaluate.held_out_examples("open_ended", tasks=("pair_capitals",), version=2)
    with pytest.raises(ValueError, match="unknown corpus version 4"):
        evaluate.held_out_examples("open_ended", version=4)
    # eval_table checks splits and tasks before any model loads (this one does not exist)
    with pytest.raises(ValueError, match="unknown task 'capitals' in open_ended, "
                                         "reversal_forward.*'capital'.*'pair_sound'"):
        evaluate.eval_table(("no-such-model",), corpus_version=2,
                            splits=("open_ended", "reversal_forward"), tasks=("capitals",))
    with pytest.raises(ValueError, match="needs corpus v2"):
        evaluate.eval_table(("no-such-model",), corpus_version=1, splits=("open_ended",))
    with pytest.raises(ValueError, match="corpus v2: add --corpus-version 2"):
        evaluate.eval_table(("no-such-model",), corpus_version=1, tokens_per_pass=(1,))
    with pytest.raises(ValueError, match="positive integers or 'all'"):
        evaluate.eval_table(("no-such-model",), corpus_version=2, tokens_per_pass=(0,))


@pytest.mark.parametrize("argv,says", [
    (["--corpus-version", "2", "--split", "open_ende"], "unknown split 'open_ende' of "
     "corpus v2: choose one of heldout_entities, heldout_phrasings, open_ended"),
    (["--corpus-version", "1", "--split", "reversal_forward"],
     "'reversal_forward' needs corpus v2"),
    (["--corpus-version", "2", "--task", "colours"], "unknown task 'colours'"),
    (["--corpus-version", "2", "--tokens-per-pass", "1", "none"], "positive integers or 'all'"),
    (["--corpus-version", "4"], "invalid choice: 4"),
])
def test_eval_cli_refuses_bad_splits_and_tasks(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main_eval(["--model", "no-such-model", *argv])
    assert e.value.code == 2
    assert says in capsys.readouterr().err


def _other_pair(continent: str, not_country: str) -> str:
    country, capital, *_ = next(c for c in COUNTRIES
                                if c[2] == continent and c[0] != not_country)
    return f"The capital of {country} is {capital}."


def test_consistency_scores_any_right_answer_and_no_mixed_one():
    ex = evaluate.held_out_examples("open_ended", tasks="pair_capital", version=2)[0]
    country = ex.answer.split(" of ")[1].split(" is ")[0]
    right = _other_pair(ex.entity, country)           # another true pair: not the reference
    assert right != ex.answer
    assert evaluate.score_example(ex, right) and evaluate.score_example(ex, ex.answer)
    assert not evaluate.score_answer(right, ex.keys, ex.answer)       # exact match says no
    mixed = right.rsplit(" is ", 1)[0] + " is " + ex.answer.rsplit(" is ", 1)[1]
    assert data.consistent(ex.task, ex.entity, right) and not evaluate.score_example(ex, mixed)
    two = evaluate.held_out_examples("open_ended", tasks="two_countries", version=2)[0]
    first = two.answer.split(" and ")[0]
    assert evaluate.score_example(two, two.answer)
    assert not evaluate.score_example(two, f"{first} and {first}.")   # two different ones
    # the reversal split is exact match, like the other short tasks
    rev = evaluate.held_out_examples("reversal_backward", version=2)[0]
    assert evaluate.score_example(rev, rev.answer)
    assert not evaluate.score_example(rev, rev.answer[:-1] + " too.")


def test_open_ended_rows_report_consistency(tiny_dllm):
    model, tok = tiny_dllm
    examples = evaluate.held_out_examples("open_ended", limit=8, version=2)
    res = evaluate.evaluate_answers(model, tok, examples, progress=False)
    assert res["metric"] == "consistency"
    oks = [data.consistent(ex.task, ex.entity, answer) for ex, answer, _ in res["rows"]]
    assert [ok for *_, ok in res["rows"]] == oks
    assert res["consistency"] == res["accuracy"] == sum(oks) / 8
    assert res["consistency_ci"] == wilson_interval(sum(oks), 8)
    assert res["empty_answers"] == sum(not a.strip() for _, a, _ in res["rows"])
    for task, rate in res["per_task"].items():
        mine = [ok for ex, ok in zip(examples, oks) if ex.task == task]
        assert rate == sum(mine) / len(mine)
        assert res["per_task_ci"][task] == wilson_interval(sum(mine), len(mine))
    rev = evaluate.evaluate_answers(model, tok, evaluate.held_out_examples(
        "reversal_forward", limit=4, version=2), progress=False)
    assert rev["metric"] == "exact match" and "consistency" not in rev


def test_consistency_curve_against_tokens_per_pass(tiny_dllm):
    model, tok = tiny_dllm
    examples = evaluate.held_out_examples("open_ended", limit=8, version=2)
    curve = evaluate.consistency_by_parallelism(model, tok, examples, (2, None))
    assert list(curve) == [2, "all"]
    # 32 answer positions: 2 per pass is 16 passes, the whole answer 1 pass
    assert curve[2]["mean_nfe"] == 16 and curve[2]["tokens_per_nfe"] == 2
    assert curve["all"]["mean_nfe"] == 1 and curve["all"]["tokens_per_nfe"] == 32
    assert curve["all"]["mean_nfe"] <= curve[2]["mean_nfe"]   # more per pass: fewer passes
    for row in curve.values():
        k = round(row["consistency"] * row["n"])
        assert row["n"] == 8 and row["consistency_ci"] == wilson_interval(k, 8)
    # one engine: the same as LLaDA's sampler with ceil(32 / 2) steps
    same = evaluate.evaluate_answers(model, tok, examples, "llada", progress=False, steps=16)
    assert same["consistency"] == curve[2]["consistency"]
    with pytest.raises(ValueError, match="open-ended tasks"):
        evaluate.consistency_by_parallelism(
            model, tok, evaluate.held_out_examples("reversal_forward", limit=2, version=2))
    with pytest.raises(ValueError, match="positive integers or 'all'"):
        evaluate.consistency_by_parallelism(model, tok, examples, (1, 0))
    with pytest.raises(ValueError, match="tokens_per_pass sets the steps"):
        evaluate.evaluate_answers(model, tok, examples, "greedy", tokens_per_pass=2)


def test_eval_table_on_a_causal_model(tmp_path, tokenizer_dir, capsys):
    from dllm_lesson.training import TrainConfig, init_model

    model, tok = init_model(TrainConfig(objective="ar", model="scratch", model_config=SMALL,
                                        tokenizer=str(tokenizer_dir)))
    folder = tmp_path / "tiny-causal"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    assert loading.model_backend(folder) == "transformers"
    assert loading.model_backend("tiny-dllm") == "lesson"
    res = evaluate.eval_table((str(folder),), limit=4, corpus_version=2,
                              tokens_per_pass=(1, None), progress=False)[str(folder)]
    assert not any(key.startswith("mask_ratio") for key in res)   # nothing to unmask
    assert evaluate.CURVE_KEY not in res       # one token per pass by construction
    assert sorted(res) == sorted(f"{s}_ar" for s in evaluate.EVAL_SPLITS[2])
    for split in evaluate.EVAL_SPLITS[2]:
        row = res[f"{split}_ar"]
        assert row["n"] == 4 and row["mean_nfe"] >= 1 and row["tokens_per_nfe"] >= 1
    assert res["open_ended_ar"]["metric"] == "consistency"
    text = evaluate.format_table({"causal": res})
    assert "causal, open_ended_ar: consistency" in text
    assert "Token accuracy of one forward pass" not in text
    assert any(line.startswith("causal      ar") for line in text.splitlines())  # reversal
    json.dumps(res)                                 # --json and model cards can write it
    with pytest.raises(ValueError, match="causal LM writes one token per forward pass"):
        from dllm_lesson.loading import load_model

        m, t = load_model(folder, device="cpu")
        evaluate.consistency_by_parallelism(
            m, t, evaluate.held_out_examples("open_ended", limit=2, version=2))


def test_format_table_prints_the_v2_rows():
    def row(k, n, metric, task):
        return {"accuracy": k / n, "accuracy_ci": wilson_interval(k, n), "n": n,
                "metric": metric, "mean_nfe": 32.0, "corrections_per_answer": 0.0,
                "answers_with_correction": 0.0, "empty_answers": 1,
                "per_task": {task: k / n}, "per_task_ci": {task: wilson_interval(k, n)}}

    curve = {1: {"consistency": 0.9, "consistency_ci": (0.8, 0.95), "n": 10,
                 "mean_nfe": 32.0, "tokens_per_nfe": 1.0},
             "all": {"consistency": 0.2, "consistency_ci": (0.05, 0.5), "n": 10,
                     "mean_nfe": 1.0, "tokens_per_nfe": 32.0}}
    res = {"m": {"open_ended_greedy": row(7, 10, "consistency", "pair_capital"),
                 "reversal_forward_greedy": row(9, 10, "exact match", "capital"),
                 "reversal_backward_greedy": row(3, 10, "exact match", "country_of_capital"),
                 evaluate.CURVE_KEY: curve}}
    text = evaluate.format_table(res)
    assert "m, open_ended_greedy: consistency (a true pair" in text
    assert "0.700 [0.397, 0.892]" in text and "1 empty answers" in text
    assert "m, reversal_forward_greedy: exact-match accuracy 0.900" in text
    side = next(line for line in text.splitlines() if line.startswith("m           greedy"))
    assert side.split() == ["m", "greedy", "0.900", "[0.596,", "0.982]", "0.300", "[0.108,",
                            "0.603]"]
    lines = text.splitlines()
    i = next(j for j, line in enumerate(lines) if "by tokens per forward pass" in line)
    assert lines[i + 2].split() == ["1", "0.900", "[0.800,", "0.950]", "32.0", "1.00", "10"]
    assert lines[i + 3].split() == ["all", "0.200", "[0.050,", "0.500]", "1.0", "32.00", "10"]


def test_format_table_reversal_rows_keep_a_long_model_path_apart():
    ev = {"accuracy": 0.5, "accuracy_ci": (0.2, 0.8), "n": 4, "metric": "exact match",
          "mean_nfe": 8.0, "corrections_per_answer": 0.0, "answers_with_correction": 0.0,
          "per_task": {"capital": 0.5}, "per_task_ci": {"capital": (0.2, 0.8)}}
    name = "/a/long/folder/of/models/tiny-dllm"
    text = evaluate.format_table({name: {"reversal_forward_greedy": ev,
                                         "reversal_backward_greedy": ev}})
    row = next(line for line in text.splitlines() if line.startswith(name + " "))
    assert row.split()[:2] == [name, "greedy"]
