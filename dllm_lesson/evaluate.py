"""Held-out accuracy: does the answer state the right facts, and stop cleanly?

``python -m dllm_lesson eval`` prints the tables; notebooks 02, 03 and 09 call the same
functions. Taught in ``02_llada_training``.
"""

from __future__ import annotations

from .claims import wilson_interval  # noqa: F401 - eval reports 95% intervals with it


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
                      seed: int = 0, version: int | None = None):
    """Held-out corpus rows (``Example``) of the given tasks, a fixed subsample if
    ``limit`` is set (every task keeps its share), from corpus ``version`` (default: the
    course's, ``data.CORPUS_VERSION``). An unknown split or task raises one
    ``ValueError`` naming the known ones.
    Taught in ``02_llada_training``."""
    import random

    from .data import CORPUS_VERSION, build_corpus

    splits = ("heldout_entities", "heldout_phrasings")
    if split not in splits:
        raise ValueError(f"unknown split {split!r}: choose one of {splits}")
    rows = getattr(build_corpus(seed, version=version or CORPUS_VERSION), split)
    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = tuple(tasks or SHORT_TASKS + ("describe",))
    known = sorted({r.task for r in rows})
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ValueError(f"unknown task{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))} in {split}: choose from {known}")
    rows = [r for r in rows if r.task in tasks]
    if limit is not None and limit < len(rows):
        rows = random.Random(1234).sample(rows, limit)
    return rows


def evaluate_answers(model, tokenizer, examples, strategy: str = "greedy",
                     answer_length: int | None = None, progress: bool = True,
                     keep_steps: bool = False, batch_size: int = 64, **options) -> dict:
    """Decode each example with one strategy (``options`` go to
    :func:`dllm_lesson.sampling.decode_steps`) and score the answers.

    Returns ``accuracy`` overall with its 95% Wilson interval ``accuracy_ci``, ``per_task``
    accuracies (:func:`score_answer`) and ``per_task_ci``, ``n``,
    ``mean_nfe`` (forward passes per answer), ``tokens_per_nfe`` (answer positions per
    pass), ``corrections_per_answer`` and ``answers_with_correction`` (self-corrections:
    positions of the final answer text whose token changed after it had looked final, as
    the ``remask`` and ``duo`` strategies mark them; 0 for the others) and the ``rows``
    ``(example, answer, correct)`` in the order of ``examples``; with ``keep_steps`` also
    ``steps``, each example's list of ``Step`` records. ``answer_length`` defaults to a
    per-task size (``ANSWER_LENGTH``). ``progress=False`` hides the bar.

    Examples are decoded ``batch_size`` at a time (one batch per answer length, sorted
    by prompt length so that little padding is needed); each answer is the one its prompt
    gets alone (``batch_size=1`` decodes them one by one).

    Taught in ``02_llada_training``, ``04_block_generation_and_kv_cache``.
    """
    from tqdm.auto import tqdm

    from .sampling import answer_end, answer_text, decode_steps

    if not examples:
        raise ValueError("evaluate_answers needs at least one example")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(examples)
    sizes = [answer_length or ANSWER_LENGTH.get(ex.task, DEFAULT_ANSWER_LENGTH)
             for ex in examples]
    prompt_tokens = [len(tokenizer(ex.prompt, add_special_tokens=False).input_ids)
                     for ex in examples]
    order = sorted(range(n), key=lambda i: (sizes[i], prompt_tokens[i], i))
    batches, current = [], []
    for i in order:
        if current and (len(current) == batch_size or sizes[current[0]] != sizes[i]):
            batches.append(current)
            current = []
        current.append(i)
    batches.append(current)

    last, fixed, records = [None] * n, [set() for _ in range(n)], [[] for _ in range(n)]
    bar = tqdm(total=n, desc=f"eval {strategy}", leave=False, disable=not progress)
    for batch in batches:
        steps = decode_steps(model, tokenizer, [examples[i].prompt for i in batch],
                             sizes[batch[0]], strategy, **options)
        for row in steps:
            for i, step in zip(batch, row):
                if step is None:
                    continue
                last[i] = step
                fixed[i].update(step.corrected)
                if keep_steps:
                    records[i].append(step)
        bar.update(len(batch))
    bar.close()

    rows, per_task, fixes = [], {}, []
    for i, ex in enumerate(examples):
        answer = answer_text(tokenizer, last[i].tokens)
        end = answer_end(tokenizer, last[i].tokens)
        ok = score_answer(answer, ex.keys, ex.answer)
        rows.append((ex, answer, ok))
        per_task.setdefault(ex.task, []).append(ok)
        fixes.append(sum(1 for j in fixed[i] if j < end))
    right = sum(ok for *_, ok in rows)
    nfes = [s.nfe for s in last]
    out = {"accuracy": right / n, "accuracy_ci": wilson_interval(right, n), "n": n,
           "per_task": {t: sum(v) / len(v) for t, v in sorted(per_task.items())},
           "per_task_ci": {t: wilson_interval(sum(v), len(v))
                           for t, v in sorted(per_task.items())},
           "mean_nfe": sum(nfes) / n, "tokens_per_nfe": sum(sizes) / sum(nfes),
           "corrections_per_answer": sum(fixes) / n,
           "answers_with_correction": sum(f > 0 for f in fixes) / n,
           "rows": rows}
    if keep_steps:
        out["steps"] = records
    return out


def mask_ratio_accuracy(model, tokenizer, ratios=(0.15, 0.3, 0.5, 0.7, 0.9), n_rows=64,
                        seq_len: int = 128, seed: int = 0,
                        counts: bool = False) -> dict[float, float]:
    """Token accuracy of a single forward pass when a fraction ``ratio`` of the text's
    tokens is masked: BERT is good at 15% and collapses as the ratio grows; a model trained
    with variable masking keeps going. ``counts=True``: ``(right, masked)`` token counts
    instead of the fraction. Taught in ``01_bert_masking``.
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
        right, total = ((pred == x0) & masked).sum().item(), masked.sum().item()
        out[float(r)] = (right, total) if counts else right / max(1, total)
    return out


def _steps_list(steps) -> list:
    steps = [steps] if steps is None or isinstance(steps, int) else list(steps)
    for k in steps:
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise ValueError(f"steps must be positive integers, got {k!r}")
    return steps


def measure_model(name: str, model, tokenizer, strategy=None, steps=None, limit=None,
                  ratios=(0.15, 0.3, 0.5, 0.7, 0.9), progress: bool = True,
                  batch_size: int = 64, corpus_version: int | None = None,
                  **options) -> dict:
    """One model's numbers: token accuracy by mask ratio and, for chat models, held-out
    accuracy on both splits (keys ``heldout_<split>_<strategy>[_<k>steps]``).

    ``strategy=None`` picks the model's own sampler: Duo models (a name containing "duo")
    the uniform-state sampler (32 steps unless ``steps`` says), masked models the seed's
    greedy decoding, or LLaDA's sampler (one block, low-confidence) when ``steps`` is
    given. ``steps``: an int or a list of them, one row per value. ``eval`` and the model
    cards of ``build-models`` both come from here. Every accuracy comes with its 95%
    Wilson interval (keys ending in ``_ci``).
    Taught in ``02_llada_training``.
    """
    from .loading import is_causal

    steps = _steps_list(steps)
    model.eval()
    causal = is_causal(model.config)
    res = {}
    if not causal:   # a causal LM has no mask to fill
        tokens = mask_ratio_accuracy(model, tokenizer, ratios, counts=True)
        res = {"mask_ratio_token_accuracy": {r: k / max(1, t) for r, (k, t) in tokens.items()},
               "mask_ratio_token_accuracy_ci": {r: wilson_interval(k, t)
                                                for r, (k, t) in tokens.items()}}
    if name == "tiny-bert":  # tiny-bert is no chat model: it has nothing to answer
        return res
    if causal:       # one token per pass, left to right: no steps to choose
        steps = [None]
    for k in steps:
        strat = strategy or ("ar" if causal else "duo" if "duo" in str(name)
                             else "llada" if k else "greedy")
        opts = dict(options)
        if k is not None:
            opts["steps"] = k
        elif strat == "duo":
            opts["steps"] = 32
        label = (strat + (f"_{opts['sampler']}" if opts.get("sampler") else "")
                 + (f"_{opts['steps']}steps" if "steps" in opts else ""))
        for split in ("heldout_entities", "heldout_phrasings"):
            ev = evaluate_answers(model, tokenizer, held_out_examples(split, limit=limit,
                                                                     version=corpus_version),
                                  strategy=strat, progress=progress,
                                  batch_size=batch_size, **opts)
            res[f"{split}_{label}"] = {key: v for key, v in ev.items() if key != "rows"}
    return res


def eval_table(models=("tiny-bert", "tiny-dllm"), strategy=None, limit=None,
               ratios=(0.15, 0.3, 0.5, 0.7, 0.9), steps=None, progress: bool = True,
               batch_size: int = 64, **options) -> dict:
    """The numbers ``python -m dllm_lesson eval`` prints: :func:`measure_model` for each
    model (loaded on the CPU with the lesson backend), as a dict by model name. ``steps``
    ``[8, 16, 32]`` compares masked and Duo models at equal forward passes.
    Taught in ``02_llada_training``."""
    from .loading import load_model

    _steps_list(steps)  # a bad value fails before any model loads
    results = {}
    for name in models:
        model, tok = load_model(name, device="cpu", backend="lesson")
        results[name] = measure_model(name, model, tok, strategy, steps, limit, ratios,
                                      progress, batch_size, **options)
    return results


def _ci(interval) -> str:
    lo, hi = interval
    return f"[{lo:.3f}, {hi:.3f}]"


def format_table(results: dict) -> str:
    """The eval tables as text: every accuracy with its 95% Wilson interval.
    Taught in ``02_llada_training``."""
    lines = []
    ratios = sorted({r for res in results.values() for r in res["mask_ratio_token_accuracy"]})
    lines.append("Token accuracy of one forward pass, by mask ratio (95% interval below)")
    lines.append(f"{'model':<12}" + "".join(f"{r:>16.2f}" for r in ratios))
    for name, res in results.items():
        acc = res["mask_ratio_token_accuracy"]
        ci = res.get("mask_ratio_token_accuracy_ci", {})
        lines.append(f"{name:<12}" + "".join(f"{acc[r]:>16.3f}" for r in ratios))
        if ci:
            lines.append(f"{'':<12}" + "".join(f"{_ci(ci[r]):>16}" for r in ratios))
    for name, res in results.items():
        for key, ev in res.items():
            if key.startswith("mask_ratio_token_accuracy"):
                continue
            lines.append(f"\n{name}, {key}: exact-match accuracy {ev['accuracy']:.3f} "
                         f"{_ci(ev['accuracy_ci'])} "
                         f"(n={ev['n']}, {ev['mean_nfe']:.1f} forward passes per answer, "
                         f"{ev['corrections_per_answer']:.2f} self-corrections per answer, "
                         f"{ev['answers_with_correction']:.0%} of answers with one)")
            for task, a in ev["per_task"].items():
                lines.append(f"  {task:<20}{a:>7.3f}  {_ci(ev['per_task_ci'][task])}")
    return "\n".join(lines)


def main_eval(argv=None):
    """``python -m dllm_lesson eval``: held-out accuracy and accuracy against mask ratio,
    each with its 95% Wilson interval. Taught in ``02_llada_training``."""
    import argparse
    import json

    import torch

    p = argparse.ArgumentParser(prog="python -m dllm_lesson eval",
                                description=main_eval.__doc__)
    p.add_argument("--model", action="append", help="model name or path (repeatable); "
                   "default: tiny-bert and tiny-dllm")
    p.add_argument("--strategy", default=None, help="decoding strategy (default: greedy, "
                   "duo for Duo models)")
    p.add_argument("--steps", type=int, nargs="+", default=None,
                   help="sampler steps, one row per value (e.g. --steps 8 16 32): Duo "
                   "models use the duo sampler, masked models LLaDA's (equal forward passes)")
    p.add_argument("--sampler", default=None, choices=["ancestral", "renoise"],
                   help="Duo models: the ancestral sampler (default) or the seed's "
                   "predict-and-renoise")
    p.add_argument("--limit", type=int, default=None, help="evaluate a fixed subsample")
    p.add_argument("--batch-size", type=int, default=64,
                   help="prompts decoded together (1: one at a time; same answers)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--update-card", action="store_true",
                   help="write the results into each shipped model's card")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = tuple(args.model or ("tiny-bert", "tiny-dllm"))
    try:
        extra = {"sampler": args.sampler} if args.sampler else {}
        results = eval_table(models, args.strategy, args.limit, steps=args.steps,
                             batch_size=args.batch_size, **extra)
    except ValueError as e:
        p.error(str(e))
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.update_card:
        from .cards import update_card
        from .loading import model_path

        cmd = "python -m dllm_lesson eval " + " ".join(argv or [])
        for name, res in results.items():
            split = f"a fixed subsample of {args.limit}" if args.limit else "all"
            update_card(model_path(name), res, f"`{cmd.strip()}` on CPU ({split} held-out "
                        "questions, exact match)")
    return results
