"""``dllm_lesson.evaluate``: scoring, the eval table's rows at equal forward passes, and
the self-correction count (on the shipped tiny models, a few examples each)."""

from __future__ import annotations

import json

import pytest

from dllm_lesson import evaluate
from dllm_lesson.loading import load_model
from dllm_lesson.sampling import decode_steps

pytestmark = pytest.mark.usefixtures("one_thread")


def test_score_answer_is_exact_up_to_whitespace():
    assert evaluate.score_answer("The capital of France is  Paris.", (),
                                 "The capital of France is Paris.")
    assert not evaluate.score_answer("The capital of France is Paris. Paris.", (),
                                     "The capital of France is Paris.")
    assert evaluate.score_answer("Paris and Paris", ("Paris", "Paris"))
    assert not evaluate.score_answer("Paris", ("Paris", "Paris"))


def test_corrections_are_counted_inside_the_answer_text():
    model, tok = load_model("tiny-duo", device="cpu", backend="lesson")
    examples = evaluate.held_out_examples("heldout_entities", tasks=("capital",), limit=6)
    res = evaluate.evaluate_answers(model, tok, examples, "duo", progress=False, steps=8)
    assert res["n"] == 6 and res["mean_nfe"] == 8
    counts = []
    for ex in examples:   # the same count, the slow way
        steps = list(decode_steps(model, tok, ex.prompt, 32, "duo", steps=8))
        end = next((i for i, t in enumerate(steps[-1].tokens) if t == tok.sep_token_id), 32)
        counts.append(len({i for s in steps for i in s.corrected if i < end}))
    assert res["corrections_per_answer"] == pytest.approx(sum(counts) / 6)
    assert res["answers_with_correction"] == pytest.approx(sum(c > 0 for c in counts) / 6)
    alone = evaluate.evaluate_answers(model, tok, examples[:1], "duo", progress=False, steps=8)
    assert alone["rows"][0][1] == res["rows"][0][1]   # seeded: the same answer alone


def test_evaluate_answers_counts_passes_and_keeps_steps():
    from dllm_lesson.data import Example

    model, tok = load_model("tiny-dllm", device="cpu", backend="lesson")
    examples = [Example("capital", "What is the capital of Peru?", "nonsense", ("x",),
                        "Peru", 0)] * 2
    res = evaluate.evaluate_answers(model, tok, examples, "llada", answer_length=12,
                                    progress=False, keep_steps=True, steps=4)
    assert res["mean_nfe"] == 4 and res["tokens_per_nfe"] == 3
    assert res["accuracy"] == 0.0 and [ok for *_, ok in res["rows"]] == [False, False]
    assert len(res["steps"]) == 2 and len(res["steps"][0]) == 4
    assert res["rows"][0][1] == "The capital of Peru is Lima."
    assert "steps" not in evaluate.evaluate_answers(model, tok, examples[:1], "llada",
                                                    answer_length=12, progress=False,
                                                    steps=4)
    with pytest.raises(ValueError, match="at least one example"):
        evaluate.evaluate_answers(model, tok, [], progress=False)


def test_eval_rows_at_equal_forward_passes(tmp_path, capsys):
    path = tmp_path / "eval.json"
    evaluate.main_eval(["--model", "tiny-dllm", "--model", "tiny-duo", "--steps", "4", "8",
                        "--limit", "4", "--threads", "1", "--json", str(path)])
    res = json.loads(path.read_text())
    for split in ("heldout_entities", "heldout_phrasings"):
        for k in (4, 8):
            masked = res["tiny-dllm"][f"{split}_llada_{k}steps"]
            duo = res["tiny-duo"][f"{split}_duo_{k}steps"]
            assert masked["mean_nfe"] == duo["mean_nfe"] == k
            assert masked["n"] == duo["n"] == 4
            assert masked["corrections_per_answer"] == 0   # llada never takes a token back
    out = capsys.readouterr().out
    assert "tiny-duo, heldout_entities_duo_8steps: exact-match accuracy" in out
    assert "8.0 forward passes per answer" in out


def test_eval_refuses_bad_steps(capsys):
    with pytest.raises(SystemExit):
        evaluate.main_eval(["--model", "tiny-dllm", "--steps", "0", "--limit", "1"])
    assert "steps must be positive integers, got 0" in capsys.readouterr().err


def test_wilson_interval_known_values():
    # textbook values (e.g. Newcombe 1998, Table I; Agresti & Coull 1998), z = 1.96
    assert evaluate.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert evaluate.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert evaluate.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert evaluate.wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert evaluate.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        evaluate.wilson_interval(3, 2)


def test_wilson_interval_covers_as_promised():
    """Monte Carlo: at p = 0.9, n = 50 the interval holds p in about 95% of samples
    (binomial counts are discrete: the exact coverage here is 97.3%)."""
    import random

    rng = random.Random(0)
    hits = 0
    for _ in range(4000):
        k = sum(rng.random() < 0.9 for _ in range(50))
        lo, hi = evaluate.wilson_interval(k, 50)
        hits += lo <= 0.9 <= hi
    assert 0.92 <= hits / 4000 <= 0.98     # discrete: 0.973 exactly at this p, n


def test_unknown_split_or_task_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown split 'heldout'.*heldout_entities"):
        evaluate.held_out_examples("heldout")
    with pytest.raises(ValueError, match="unknown task 'capitals'.*'capital'"):
        evaluate.held_out_examples("heldout_entities", tasks=("capitals",))
    assert {e.task for e in evaluate.held_out_examples("heldout_entities", "legs")} == {"legs"}


def test_batched_eval_gives_the_answers_one_at_a_time():
    """Mixed tasks (answer areas 32 and 64), prompts of many lengths, batches of 5."""
    model, tok = load_model("tiny-dllm", device="cpu", backend="lesson")
    examples = evaluate.held_out_examples("heldout_phrasings", limit=14)
    assert len({ex.task for ex in examples}) > 3
    batched = evaluate.evaluate_answers(model, tok, examples, "threshold", threshold=0.7,
                                        block_length=16, progress=False, batch_size=5,
                                        keep_steps=True)
    alone = evaluate.evaluate_answers(model, tok, examples, "threshold", threshold=0.7,
                                      block_length=16, progress=False, batch_size=1,
                                      keep_steps=True)
    assert [r[1] for r in batched["rows"]] == [r[1] for r in alone["rows"]]
    assert batched["steps"] == alone["steps"]
    assert [r[0] for r in batched["rows"]] == examples            # the caller's order
    k = sum(ok for *_, ok in batched["rows"])
    assert batched["accuracy_ci"] == evaluate.wilson_interval(k, 14)
    assert set(batched["per_task_ci"]) == set(batched["per_task"])
    with pytest.raises(ValueError, match="batch_size"):
        evaluate.evaluate_answers(model, tok, examples, batch_size=0)


def test_eval_table_prints_intervals():
    res = {"m": {"mask_ratio_token_accuracy": {0.5: 0.5},
                 "mask_ratio_token_accuracy_ci": {0.5: (0.4, 0.6)},
                 "heldout_entities_greedy": {
                     "accuracy": 0.5, "accuracy_ci": (0.2366, 0.7634), "n": 10,
                     "mean_nfe": 32.0, "corrections_per_answer": 0.0,
                     "answers_with_correction": 0.0, "per_task": {"capital": 0.5},
                     "per_task_ci": {"capital": (0.2366, 0.7634)}}}}
    text = evaluate.format_table(res)
    assert "exact-match accuracy 0.500 [0.237, 0.763]" in text
    assert "capital" in text and "[0.400, 0.600]" in text
