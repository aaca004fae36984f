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
