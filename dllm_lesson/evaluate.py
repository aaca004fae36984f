"""Held-out accuracy: does the answer state the right facts, and stop cleanly?

``python -m dllm_lesson eval`` prints the tables; notebooks 02, 03 and 09 call the same
functions. Taught in ``02_llada_training``.
"""

from __future__ import annotations


def score_answer(answer: str, keys=(), reference: str | None = None) -> bool:
    """Is ``answer`` right?

    With a ``reference`` (the corpus's answer) the answer must equal it, up to whitespace:
    the tiny models answer in fixed forms, so anything else (the right capital after the
    wrong country, runaway text after the answer) is wrong. Without one, every key string
    (``Example.keys``) must appear, as often as it is listed.
    """
    if reference is not None:
        return " ".join(answer.split()) == " ".join(reference.split())
    from collections import Counter

    return all(answer.count(k) >= n for k, n in Counter(keys).items())


def fact_score(answer: str, keys) -> float:
    """Partial credit for long answers: the fraction of the expected facts (``keys``,
    counted with multiplicity) that the answer states. A list of ten countries with one
    wrong capital scores 29/30 where :func:`score_answer` says simply "wrong".
    Taught in ``05_remasking_and_parallel_decoding``.
    """
    from collections import Counter

    need = Counter(keys)
    if not need:
        raise ValueError("fact_score needs at least one key")
    return sum(min(answer.count(k), n) for k, n in need.items()) / sum(need.values())


SHORT_TASKS = ("capital", "continent", "language", "country_of_capital", "legs", "sound",
               "colour")
#: answer area per task: room for the answer and a tail the model must fill with [SEP]
ANSWER_LENGTH = {"describe": 64, "describe_many": 256, "count": 256}
DEFAULT_ANSWER_LENGTH = 32


def held_out_examples(split: str = "heldout_entities", tasks=None, limit: int | None = None,
                      seed: int = 0):
    """Held-out corpus rows (``Example``) of the given tasks, a fixed subsample if
    ``limit`` is set (every task keeps its share)."""
    import random

    from .data import build_corpus

    rows = getattr(build_corpus(seed), split)
    tasks = tuple(tasks or SHORT_TASKS + ("describe",))
    rows = [r for r in rows if r.task in tasks]
    if limit is not None and limit < len(rows):
        rows = random.Random(1234).sample(rows, limit)
    return rows


def evaluate_answers(model, tokenizer, examples, strategy: str = "greedy",
                     answer_length: int | None = None, **options) -> dict:
    """Generate an answer for each example and score it. Returns accuracy overall and per
    task, and the rows ``(example, answer, correct)``."""
    from tqdm.auto import tqdm

    from .sampling import generate

    rows, per_task = [], {}
    for ex in tqdm(examples, desc=f"eval {strategy}", leave=False):
        L = answer_length or ANSWER_LENGTH.get(ex.task, DEFAULT_ANSWER_LENGTH)
        answer = generate(model, tokenizer, ex.prompt, answer_length=L, strategy=strategy,
                          **options)
        ok = score_answer(answer, ex.keys, ex.answer)
        rows.append((ex, answer, ok))
        per_task.setdefault(ex.task, []).append(ok)
    acc = sum(ok for *_, ok in rows) / max(1, len(rows))
    return {"accuracy": acc, "n": len(rows),
            "per_task": {t: sum(v) / len(v) for t, v in sorted(per_task.items())},
            "rows": rows}


def mask_ratio_accuracy(model, tokenizer, ratios=(0.15, 0.3, 0.5, 0.7, 0.9), n_rows=64,
                        seq_len: int = 128, seed: int = 0) -> dict[float, float]:
    """Token accuracy of a single forward pass when a fraction ``ratio`` of the text's
    tokens is masked: BERT is good at 15% and collapses as the ratio grows; a model trained
    with variable masking keeps going. Taught in ``01_bert_masking``.
    """
    import torch

    from .data import build_corpus
    from .noise import mask_at_ratio
    from .training import collate, pack_texts

    rows = pack_texts(build_corpus(seed).pretrain[:400], tokenizer, seq_len)[:n_rows]
    batch = collate(rows, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    x0 = batch["input_ids"].to(device)
    am = batch["attention_mask"].to(device)
    maskable = batch["loss_mask"].to(device) & (x0 != tokenizer.sep_token_id)
    out = {}
    g = torch.Generator().manual_seed(seed)
    for r in ratios:
        xt, masked = mask_at_ratio(x0.cpu(), maskable.cpu(), tokenizer.mask_token_id, r, g)
        xt, masked = xt.to(device), masked.to(device)
        with torch.no_grad():
            pred = model(input_ids=xt, attention_mask=am).logits.argmax(-1)
        out[float(r)] = ((pred == x0) & masked).sum().item() / max(1, masked.sum().item())
    return out


def eval_table(models=("tiny-bert", "tiny-dllm"), strategy=None, limit=None,
               ratios=(0.15, 0.3, 0.5, 0.7, 0.9), **options) -> dict:
    """The numbers ``python -m dllm_lesson eval`` prints, as a dict per model.

    ``strategy=None`` decodes Duo models (a name containing "duo") with the uniform-state
    sampler at 32 steps and every other model with the seed's greedy decoding.
    """
    from .models import load_model

    results = {}
    for name in models:
        model, tok = load_model(name, device="cpu", backend="lesson")
        res = {"mask_ratio_token_accuracy": mask_ratio_accuracy(model, tok, ratios)}
        is_duo = "duo" in str(name)
        strat = strategy or ("duo" if is_duo else "greedy")
        opts = dict(options)
        if strat == "duo":
            opts.setdefault("steps", 32)
        if name != "tiny-bert":  # tiny-bert is no chat model: it has nothing to answer
            for split in ("heldout_entities", "heldout_phrasings"):
                ev = evaluate_answers(model, tok, held_out_examples(split, limit=limit),
                                      strategy=strat, **opts)
                res[f"{split}_{strat}"] = {k: v for k, v in ev.items() if k != "rows"}
        results[name] = res
    return results


def format_table(results: dict) -> str:
    lines = []
    ratios = sorted({r for res in results.values() for r in res["mask_ratio_token_accuracy"]})
    lines.append("Token accuracy of one forward pass, by mask ratio")
    lines.append(f"{'model':<12}" + "".join(f"{r:>8.2f}" for r in ratios))
    for name, res in results.items():
        acc = res["mask_ratio_token_accuracy"]
        lines.append(f"{name:<12}" + "".join(f"{acc[r]:>8.3f}" for r in ratios))
    for name, res in results.items():
        for key, ev in res.items():
            if key == "mask_ratio_token_accuracy":
                continue
            lines.append(f"\n{name}, {key}: exact-match accuracy {ev['accuracy']:.3f} "
                         f"(n={ev['n']})")
            for task, a in ev["per_task"].items():
                lines.append(f"  {task:<20}{a:>7.3f}")
    return "\n".join(lines)


def main_eval(argv=None):
    """``python -m dllm_lesson eval``: held-out accuracy and accuracy against mask ratio."""
    import argparse
    import json

    import torch

    p = argparse.ArgumentParser(prog="python -m dllm_lesson eval",
                                description=main_eval.__doc__)
    p.add_argument("--model", action="append", help="model name or path (repeatable); "
                   "default: tiny-bert and tiny-dllm")
    p.add_argument("--strategy", default=None, help="decoding strategy (default: greedy, "
                   "duo for Duo models)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (llada, duo)")
    p.add_argument("--limit", type=int, default=None, help="evaluate a fixed subsample")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--update-card", action="store_true",
                   help="write the results into each shipped model's card")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = {"steps": args.steps} if args.steps else {}
    models = tuple(args.model or ("tiny-bert", "tiny-dllm"))
    results = eval_table(models, args.strategy, args.limit, **opts)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.update_card:
        from .build import update_card
        from .models import model_path

        cmd = "python -m dllm_lesson eval " + " ".join(argv or [])
        for name, res in results.items():
            update_card(model_path(name), res, f"Measured on CPU with `{cmd.strip()}` "
                        "(exact-match accuracy on the held-out splits).")
    return results
