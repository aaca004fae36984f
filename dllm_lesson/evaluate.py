"""Held-out accuracy: does the answer state the right facts, and stop cleanly?

``python -m dllm_lesson eval`` prints the tables; notebooks 02, 03 and 09 call the same
functions. On corpus v2 (``--corpus-version 2``) it also asks the open-ended questions,
scored for consistency (any true pair, two different countries), the reversal split
forward and backward, and (``--tokens-per-pass``) consistency against tokens committed
per forward pass. Every rate comes with its 95% Wilson interval.
Taught in ``02_llada_training``.
"""

from __future__ import annotations

from .claims import wilson_interval  # noqa: F401 - eval reports 95% intervals with it
from .loading import model_backend  # noqa: F401 - eval loads each model with it


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
#: the splits ``eval`` measures, per corpus version (v2 adds the open-ended and reversal
#: ones; see :mod:`dllm_lesson.data`)
EVAL_SPLITS = {1: ("heldout_entities", "heldout_phrasings"),
               2: ("heldout_entities", "heldout_phrasings", "open_ended", "reversal_forward",
                   "reversal_backward")}
EVAL_SPLITS[3] = EVAL_SPLITS[2]  # v3: v2's chat splits, another pretraining text
#: splits scored for consistency (many right answers, :func:`dllm_lesson.data.consistent`)
OPEN_ENDED_SPLITS = ("open_ended",)


def _version(version: int | None) -> int:
    from .data import CORPUS_VERSION, VERSIONS

    version = CORPUS_VERSION if version is None else version
    if version not in VERSIONS:
        raise ValueError(f"unknown corpus version {version!r}; choose one of {VERSIONS}")
    return version


def check_splits(splits, version: int | None = None) -> tuple[str, ...]:
    """The splits as a tuple, or one ``ValueError`` naming the known ones of corpus
    ``version`` (a v2 split asked of v1 says that it needs corpus v2)."""
    version = _version(version)
    if isinstance(splits, str):
        splits = (splits,)
    known = EVAL_SPLITS[version]
    for split in splits:
        if split in known:
            continue
        if any(split in v for v in EVAL_SPLITS.values()):
            raise ValueError(f"split {split!r} needs corpus v2 (version=2, or "
                             f"--corpus-version 2 on the command line); corpus v{version} "
                             f"has {', '.join(known)}")
        raise ValueError(f"unknown split {split!r} of corpus v{version}: choose one of "
                         f"{', '.join(known)}")
    return tuple(splits)


def not_leaked(tasks, split: str = "heldout_entities", version: int | None = None) -> tuple:
    """``tasks`` less those that SFT gives away on ``split`` of corpus ``version`` (default:
    the course's), as listed in ``data.NOT_HELD_OUT``: ``sound`` on v2's held-out
    entities. Taught in ``02_llada_training``."""
    from .data import NOT_HELD_OUT

    leaked = NOT_HELD_OUT.get(_version(version), {}).get(split, ())
    return tuple(t for t in tasks if t not in leaked)


def held_out_examples(split: str = "heldout_entities", tasks=None, limit: int | None = None,
                      seed: int = 0, version: int | None = None):
    """Held-out corpus rows (``Example``) of the given tasks, a fixed subsample if
    ``limit`` is set (every task keeps its share), from corpus ``version`` (default: the
    course's, ``data.CORPUS_VERSION``). Splits: ``EVAL_SPLITS[version]``; corpus v2 adds
    ``open_ended`` (tasks ``pair_capital``, ``pair_sound``, ``two_countries``, scored for
    consistency) and the reversal split, ``reversal_forward`` / ``reversal_backward``.
    Default tasks: the short ones and ``describe`` on the held-out splits, every task of
    the others, less those SFT gives away (``data.NOT_HELD_OUT``: ``sound`` on v2's
    held-out entities). An unknown split or task raises one ``ValueError`` naming the known ones.
    Taught in ``02_llada_training``."""
    import random

    from .data import build_corpus

    version = _version(version)
    check_splits(split, version)
    rows = getattr(build_corpus(seed, version=version), split)
    known = sorted({r.task for r in rows})
    if isinstance(tasks, str):
        tasks = (tasks,)
    if tasks is None:
        tasks = not_leaked(SHORT_TASKS + ("describe",) if split in EVAL_SPLITS[1] else known,
                           split, version)
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ValueError(f"unknown task{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))} in {split}: choose from {known}")
    rows = [r for r in rows if r.task in tasks]
    if limit is not None and limit < len(rows):
        rows = random.Random(1234).sample(rows, limit)
    return rows


def score_example(example, answer: str) -> bool:
    """Is ``answer`` right for ``example``? Open-ended tasks (``data.OPEN_ENDED_TASKS``):
    consistent (:func:`dllm_lesson.data.consistent`: any true pair, two different
    countries); every other task: :func:`score_answer` against the corpus's answer."""
    from .data import OPEN_ENDED_TASKS, consistent

    if example.task in OPEN_ENDED_TASKS:
        return consistent(example.task, example.entity, answer)
    return score_answer(answer, example.keys, example.answer)


def evaluate_answers(model, tokenizer, examples, strategy: str = "greedy",
                     answer_length: int | None = None, progress: bool = True,
                     keep_steps: bool = False, batch_size: int = 64,
                     tokens_per_pass: int | str | None = None, **options) -> dict:
    """Decode each example with one strategy (``options`` go to
    :func:`dllm_lesson.sampling.decode_steps`) and score the answers
    (:func:`score_example`: exact match, or consistency on the open-ended tasks).

    Returns ``accuracy`` overall (the share of answers scored right) with its 95% Wilson
    interval ``accuracy_ci``, ``metric`` (``"exact match"``, ``"consistency"`` when every
    example is open-ended, then also ``consistency`` and ``consistency_ci``, or
    ``"mixed"``), ``per_task`` accuracies and ``per_task_ci``, ``n``, ``empty_answers``
    (how many answers are empty),
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

    ``tokens_per_pass`` (an int k, or ``"all"``: the whole answer area in one pass):
    fixed-count decoding with ``steps = ceil(answer_length / k)``, for the step-scheduled
    strategies (``llada``, ``remask``); it replaces ``steps``.

    Taught in ``02_llada_training``, ``04_block_generation_and_kv_cache``.
    """
    from tqdm.auto import tqdm

    from .sampling import answer_end, answer_text, decode_steps

    if not examples:
        raise ValueError("evaluate_answers needs at least one example")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if tokens_per_pass is not None:
        if not isinstance(tokens_per_pass, (int, str)):
            raise ValueError(f"tokens_per_pass is one setting (an int or 'all'), got "
                             f"{tokens_per_pass!r}; consistency_by_parallelism takes a list")
        _tokens_per_pass_list(tokens_per_pass)
        if strategy not in ("llada", "remask") or "steps" in options:
            raise ValueError("tokens_per_pass sets the steps of strategy 'llada' (or "
                             f"'remask'); got strategy {strategy!r}"
                             + (" and steps" if "steps" in options else ""))
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
        size = sizes[batch[0]]
        if tokens_per_pass is not None:   # k tokens per pass: ceil(size / k) steps
            options["steps"] = 1 if tokens_per_pass == "all" else -(-size // tokens_per_pass)
        steps = decode_steps(model, tokenizer, [examples[i].prompt for i in batch],
                             size, strategy, **options)
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

    from .data import OPEN_ENDED_TASKS

    rows, per_task, fixes = [], {}, []
    for i, ex in enumerate(examples):
        answer = answer_text(tokenizer, last[i].tokens)
        end = answer_end(tokenizer, last[i].tokens)
        ok = score_example(ex, answer)
        rows.append((ex, answer, ok))
        per_task.setdefault(ex.task, []).append(ok)
        fixes.append(sum(1 for j in fixed[i] if j < end))
    right = sum(ok for *_, ok in rows)
    nfes = [s.nfe for s in last]
    open_ended = sum(ex.task in OPEN_ENDED_TASKS for ex in examples)
    metric = ("consistency" if open_ended == n else "exact match" if not open_ended
              else "mixed")
    out = {"accuracy": right / n, "accuracy_ci": wilson_interval(right, n), "n": n,
           "metric": metric, "empty_answers": sum(not a.strip() for _, a, _ in rows),
           "per_task": {t: sum(v) / len(v) for t, v in sorted(per_task.items())},
           "per_task_ci": {t: wilson_interval(sum(v), len(v))
                           for t, v in sorted(per_task.items())},
           "mean_nfe": sum(nfes) / n, "tokens_per_nfe": sum(sizes) / sum(nfes),
           "corrections_per_answer": sum(fixes) / n,
           "answers_with_correction": sum(f > 0 for f in fixes) / n,
           "rows": rows}
    if metric == "consistency":
        out["consistency"], out["consistency_ci"] = out["accuracy"], out["accuracy_ci"]
    if keep_steps:
        out["steps"] = records
    return out


def _tokens_per_pass_list(settings) -> list:
    """``settings`` as a list of positive ints and ``"all"`` (``None`` is ``"all"``: the
    whole answer in one pass), or a ``ValueError`` saying what to pass."""
    one = settings is None or isinstance(settings, (int, str))
    out = []
    for k in ([settings] if one else list(settings)):
        if k is None or k == "all":
            out.append("all")
        elif isinstance(k, int) and not isinstance(k, bool) and k >= 1:
            out.append(k)
        else:
            raise ValueError(f"tokens per pass must be positive integers or 'all' (the "
                             f"whole answer in one pass), got {k!r}")
    if not out:
        raise ValueError("give at least one tokens-per-pass setting, e.g. (1, 2, 4, 'all')")
    return out


def consistency_by_parallelism(model, tokenizer, examples, tokens_per_pass=(1, 2, 4, 8, None),
                               answer_length: int | None = None, progress: bool = False,
                               batch_size: int = 64, **options) -> dict:
    """Open-ended consistency against tokens committed per forward pass.

    Each setting k decodes every example with LLaDA's fixed-count low-confidence
    schedule (strategy ``llada``, one block, ``steps = ceil(answer_length / k)``; ``None``
    or ``"all"``: the whole answer area in one pass) through the course's engine, batched
    (:func:`evaluate_answers`). Committing several tokens from one pass draws each from
    its own marginal: two right answers ("The capital of Kenya is Nairobi.", "... of Ghana
    is Accra.") can mix into a wrong one ("Kenya ... Accra").

    Returns ``{k: {"consistency", "consistency_ci" (95% Wilson), "n", "mean_nfe" (forward
    passes per answer), "tokens_per_nfe" (answer positions committed per pass),
    "empty_answers", "per_task", "per_task_ci"}}``, keyed by the ints and ``"all"``.
    ``options`` go to the engine (e.g. ``remasking="random"``). A causal LM writes one
    token per pass by construction: it is refused.
    Taught in ``05_remasking_and_parallel_decoding``.
    """
    from .data import OPEN_ENDED_TASKS
    from .loading import is_causal

    settings = _tokens_per_pass_list(tokens_per_pass)
    if is_causal(model.config):
        raise ValueError("a causal LM writes one token per forward pass (strategy 'ar'): "
                         "tokens per pass is a setting of masked models")
    examples = list(examples)
    if not examples:
        raise ValueError("consistency_by_parallelism needs at least one example")
    closed = sorted({ex.task for ex in examples} - set(OPEN_ENDED_TASKS))
    if closed:
        raise ValueError(f"consistency is scored on the open-ended tasks {OPEN_ENDED_TASKS}; "
                         f"got {closed}: use held_out_examples('open_ended', version=2)")
    keep = ("consistency", "consistency_ci", "n", "mean_nfe", "tokens_per_nfe",
            "empty_answers", "per_task", "per_task_ci")
    out = {}
    for k in settings:
        ev = evaluate_answers(model, tokenizer, examples, "llada", answer_length,
                              progress=progress, batch_size=batch_size, tokens_per_pass=k,
                              **options)
        out[k] = {key: ev[key] for key in keep}
    return out


def joint_and_product(model, input_ids, pos_a: int, pos_b: int, top: int = 8) -> dict:
    """What one forward pass can and cannot tell about two masked positions.

    ``input_ids`` (L,) holds ``[MASK]`` at ``pos_a`` and ``pos_b``. One pass gives each
    position its own distribution, ``p_a`` and ``p_b``; committing both from that pass
    draws the pair from their **product** ``p_a(x) p_b(y)``. Committing ``pos_a`` first
    and asking again gives the **joint** ``p_a(x) p(y | x at pos_a)`` (one more pass per
    candidate ``x``, batched). Where the right pairs depend on each other (a country and
    its capital, two different countries), the product puts mass on pairs no right answer
    contains; the joint does not, as far as the model knows.

    Returns ``cand_a``, ``cand_b`` (the ``top`` most likely tokens of each position in the
    first pass, (top,)), ``p_a``, ``p_b`` (their probabilities, (top,)), ``product`` and
    ``joint`` ((top, top), rows: ``cand_a``, columns: ``cand_b``). Taught in
    ``05_remasking_and_parallel_decoding``.
    """
    import torch

    ids = torch.as_tensor(input_ids).reshape(-1)                     # (L,)
    with torch.no_grad():
        probs = model(input_ids=ids[None]).logits[0].double().softmax(-1)  # (L, V)
        p_a, cand_a = probs[pos_a].topk(top)                         # (top,)
        p_b, cand_b = probs[pos_b].topk(top)
        fixed = ids.repeat(top, 1)                                   # (top, L)
        fixed[:, pos_a] = cand_a                                     # each candidate in
        given = model(input_ids=fixed).logits[:, pos_b].double().softmax(-1)  # (top, V)
    return {"cand_a": cand_a, "cand_b": cand_b, "p_a": p_a, "p_b": p_b,
            "product": p_a[:, None] * p_b[None, :],
            "joint": p_a[:, None] * given[:, cand_b]}


def masked_nll_bound(model, x0, scored, mask_id: int, n_t: int = 20, seed: int = 0):
    """Masked diffusion's bound on the negative log-likelihood, in nats per token.

    The continuous-time ELBO of masked diffusion (MDLM, Eq. 10; LLaDA, Eq. 3-4) with the
    linear schedule: ``-log p(x0) <= E_t[(1/t) E[CE summed over the masked tokens]]``.
    Since ``t L`` tokens are masked on average, per token this is the mean over ``t`` of
    ``c(t)``, the cross-entropy per masked token at noise level ``t``; the mean is taken
    by the midpoint rule on ``n_t`` levels, with the same masks for every model
    (``seed``). ``x0`` (B, L) ids; ``scored`` (B, L) bool, the tokens that may be masked.
    Returns ``(bound, curve)``: a float and ``c(t)`` at the levels ``(k + 0.5) / n_t``.
    Taught in ``02_llada_training`` and ``11_ar_vs_diffusion``.
    """
    import torch
    import torch.nn.functional as F

    from .noise import llada_mask

    ts = (torch.arange(n_t) + 0.5) / n_t                              # midpoints of [0, 1]
    g = torch.Generator().manual_seed(seed)
    curve = []
    with torch.no_grad():
        for t in ts:
            xt, masked, _ = llada_mask(x0, scored, mask_id, eps=0.0,
                                       t=torch.full((len(x0),), float(t)), generator=g)
            ce = F.cross_entropy(model(input_ids=xt).logits.transpose(1, 2), x0,
                                 reduction="none")                     # (B, L)
            curve.append(((ce * masked).sum() / masked.sum()).item())
    curve = torch.tensor(curve)                                       # (n_t,)
    return curve.mean().item(), curve


def causal_nll(model, x0, scored) -> float:
    """A causal LM's exact negative log-likelihood, in nats per token: each ``scored``
    token of ``x0`` (B, L) predicted from every token before it, in one forward pass
    (position ``i``'s logits predict token ``i + 1``). Taught in ``11_ar_vs_diffusion``."""
    import torch
    import torch.nn.functional as F

    scored = torch.as_tensor(scored).bool()
    if scored[:, 0].any():
        raise ValueError("a causal LM cannot score the first token of a row: nothing comes "
                         "before it; leave position 0 out of `scored`")
    with torch.no_grad():
        logits = model(input_ids=x0).logits[:, :-1]                   # (B, L-1, V)
        ce = F.cross_entropy(logits.transpose(1, 2), x0[:, 1:], reduction="none")
    keep = scored[:, 1:]
    return (ce * keep).sum().item() / keep.sum().item()


def mask_ratio_accuracy(model, tokenizer, ratios=(0.15, 0.3, 0.5, 0.7, 0.9), n_rows=64,
                        seq_len: int = 128, seed: int = 0, counts: bool = False,
                        version: int | None = None) -> dict[float, float]:
    """Token accuracy of a single forward pass when a fraction ``ratio`` of the text's
    tokens is masked: BERT is good at 15% and collapses as the ratio grows; a model trained
    with variable masking keeps going. ``counts=True``: ``(right, masked)`` token counts
    instead of the fraction; ``version``: the corpus whose pretraining text is masked
    (default ``data.CORPUS_VERSION``). Taught in ``01_bert_masking``.
    """
    import torch

    from .data import build_corpus
    from .noise import mask_at_ratio
    from .training import collate, pack_texts

    rows = pack_texts(build_corpus(seed, version=_version(version)).pretrain[:400],
                      tokenizer, seq_len)[:n_rows]
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


def _split_tasks(splits, tasks, version: int) -> dict:
    """``{split: tasks to ask (None: the split's defaults)}``; with ``tasks``, each split
    keeps the ones it has and a split with none of them is left out. A task no chosen
    split has is one ``ValueError`` naming the known ones."""
    from .data import build_corpus

    if tasks is None:
        return {split: None for split in splits}
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    corpus = build_corpus(version=version)
    known = {split: {r.task for r in getattr(corpus, split)} for split in splits}
    every = sorted(set().union(*known.values()))
    unknown = [t for t in tasks if t not in every]
    if unknown or not tasks:
        raise ValueError(f"unknown task{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown)) or '(none given)'} in "
                         f"{', '.join(splits)} (corpus v{version}): choose from {every}")
    plan = {split: tuple(t for t in tasks if t in known[split]) for split in splits}
    return {split: t for split, t in plan.items() if t}


#: the key of :func:`measure_model`'s open-ended consistency curve
CURVE_KEY = "open_ended_by_tokens_per_pass"


def measure_model(name: str, model, tokenizer, strategy=None, steps=None, limit=None,
                  ratios=(0.15, 0.3, 0.5, 0.7, 0.9), progress: bool = True,
                  batch_size: int = 64, corpus_version: int | None = None,
                  splits=None, tasks=None, tokens_per_pass=None, **options) -> dict:
    """One model's numbers: token accuracy by mask ratio (masked models) and, for chat
    models, one row per split and strategy (keys ``<split>_<strategy>[_<k>steps]``).

    Splits: every one of corpus ``corpus_version`` (default ``data.CORPUS_VERSION``;
    ``EVAL_SPLITS``), or those in ``splits``: v1 has ``heldout_entities`` and
    ``heldout_phrasings``; v2 adds ``open_ended`` (scored for consistency) and
    ``reversal_forward`` / ``reversal_backward`` (exact match). ``tasks`` restricts every
    split to those tasks. ``tokens_per_pass`` (e.g. ``(1, 2, 4, 8, None)``, corpus v2,
    masked chat models other than Duo): also the open-ended consistency curve
    (:func:`consistency_by_parallelism`) under the key ``CURVE_KEY``.

    ``strategy=None`` picks the model's own sampler: Duo models (a name containing "duo")
    the uniform-state sampler (32 steps unless ``steps`` says), masked models the seed's
    greedy decoding, or LLaDA's sampler (one block, low-confidence) when ``steps`` is
    given. A causal LM (``loading.is_causal``) is always decoded with ``"ar"``, its only
    strategy, and has no mask-ratio rows. ``steps``: an int or a list of them, one row
    per value. ``eval`` and the model cards of ``build-models`` both come from here.
    Every rate comes with its 95% Wilson interval (keys ending in ``_ci``).
    Taught in ``02_llada_training``.
    """
    from .data import OPEN_ENDED_TASKS
    from .loading import is_causal

    version = _version(corpus_version)
    plan = _split_tasks(check_splits(splits or EVAL_SPLITS[version], version), tasks,
                        version)
    steps = _steps_list(steps)
    if tokens_per_pass is not None:
        tokens_per_pass = _tokens_per_pass_list(tokens_per_pass)
        if version < 2:
            raise ValueError("the tokens-per-pass curve is measured on the open-ended tasks "
                             "of corpus v2: use corpus_version=2 (--corpus-version 2)")
    model.eval()
    causal = is_causal(model.config)
    res = {}
    if not causal:   # a causal LM has no mask to fill
        tokens = mask_ratio_accuracy(model, tokenizer, ratios, counts=True, version=version)
        res = {"mask_ratio_token_accuracy": {r: k / max(1, t) for r, (k, t) in tokens.items()},
               "mask_ratio_token_accuracy_ci": {r: wilson_interval(k, t)
                                                for r, (k, t) in tokens.items()}}
    if name == "tiny-bert":  # tiny-bert is no chat model: it has nothing to answer
        return res
    if causal:       # one token per pass, left to right: no steps to choose
        steps = [None]
    for k in steps:
        strat = "ar" if causal else strategy or ("duo" if "duo" in str(name)
                                                 else "llada" if k else "greedy")
        opts = dict(options)
        if k is not None:
            opts["steps"] = k
        elif strat == "duo":
            opts["steps"] = 32
        label = (strat + (f"_{opts['sampler']}" if opts.get("sampler") else "")
                 + (f"_{opts['steps']}steps" if "steps" in opts else ""))
        for split, split_tasks in plan.items():
            examples = held_out_examples(split, split_tasks, limit=limit, version=version)
            ev = evaluate_answers(model, tokenizer, examples, strategy=strat,
                                  progress=progress, batch_size=batch_size, **opts)
            res[f"{split}_{label}"] = {key: v for key, v in ev.items() if key != "rows"}
    if tokens_per_pass is not None and not causal and "duo" not in str(name):
        curve_tasks = None if tasks is None else \
            [t for t in ((tasks,) if isinstance(tasks, str) else tasks)
             if t in OPEN_ENDED_TASKS]
        if curve_tasks == []:
            raise ValueError(f"the tokens-per-pass curve needs an open-ended task "
                             f"{OPEN_ENDED_TASKS}; none is among the tasks {tasks}")
        examples = held_out_examples("open_ended", curve_tasks, limit=limit, version=version)
        res[CURVE_KEY] = consistency_by_parallelism(model, tokenizer, examples,
                                                    tokens_per_pass, progress=progress,
                                                    batch_size=batch_size)
    return res


def eval_table(models=("tiny-bert", "tiny-dllm"), strategy=None, limit=None,
               ratios=(0.15, 0.3, 0.5, 0.7, 0.9), steps=None, progress: bool = True,
               batch_size: int = 64, corpus_version: int | None = None, splits=None,
               tasks=None, tokens_per_pass=None, **options) -> dict:
    """The numbers ``python -m dllm_lesson eval`` prints: :func:`measure_model` for each
    model (loaded on the CPU: the lesson backend, or transformers for a causal LM), as a
    dict by model name. ``steps`` ``[8, 16, 32]`` compares masked and Duo models at equal
    forward passes; ``corpus_version``, ``splits``, ``tasks`` and ``tokens_per_pass`` as
    in :func:`measure_model`. Bad settings fail before any model loads.
    Taught in ``02_llada_training``."""
    from .loading import load_model

    _steps_list(steps)
    version = _version(corpus_version)
    _split_tasks(check_splits(splits or EVAL_SPLITS[version], version), tasks, version)
    if tokens_per_pass is not None:
        _tokens_per_pass_list(tokens_per_pass)
        if version < 2:
            raise ValueError("the tokens-per-pass curve is measured on the open-ended tasks "
                             "of corpus v2: add --corpus-version 2")
    results = {}
    for name in models:
        model, tok = load_model(name, device="cpu", backend=model_backend(name))
        results[name] = measure_model(name, model, tok, strategy, steps, limit, ratios,
                                      progress, batch_size, corpus_version=version,
                                      splits=splits, tasks=tasks,
                                      tokens_per_pass=tokens_per_pass, **options)
    return results


def _ci(interval) -> str:
    lo, hi = interval
    return f"[{lo:.3f}, {hi:.3f}]"


METRIC_NAMES = {"exact match": "exact-match accuracy",
                "consistency": "consistency (a true pair / two different countries)",
                "mixed": "accuracy (exact match; consistency on open-ended tasks)"}


def format_table(results: dict) -> str:
    """The eval tables as text: every rate with its 95% Wilson interval; per model and
    row the per-task table; the reversal split forward and backward side by side; the
    open-ended consistency curve against tokens per forward pass.
    Taught in ``02_llada_training``."""
    lines = []
    ratios = sorted({r for res in results.values()
                     for r in res.get("mask_ratio_token_accuracy", {})})
    if ratios:
        lines.append("Token accuracy of one forward pass, by mask ratio (95% interval below)")
        lines.append(f"{'model':<12}" + "".join(f"{r:>16.2f}" for r in ratios))
    for name, res in results.items():
        acc = res.get("mask_ratio_token_accuracy")
        if not acc:
            continue
        ci = res.get("mask_ratio_token_accuracy_ci", {})
        lines.append(f"{name:<12}" + "".join(f"{acc[r]:>16.3f}" for r in ratios))
        if ci:
            lines.append(f"{'':<12}" + "".join(f"{_ci(ci[r]):>16}" for r in ratios))
    for name, res in results.items():
        for key, ev in res.items():
            if key.startswith("mask_ratio_token_accuracy") or key == CURVE_KEY:
                continue
            empty = ev.get("empty_answers")
            lines.append(f"\n{name}, {key}: "
                         f"{METRIC_NAMES[ev.get('metric', 'exact match')]} "
                         f"{ev['accuracy']:.3f} {_ci(ev['accuracy_ci'])} "
                         f"(n={ev['n']}, {ev['mean_nfe']:.1f} forward passes per answer, "
                         f"{ev['corrections_per_answer']:.2f} self-corrections per answer, "
                         f"{ev['answers_with_correction']:.0%} of answers with one"
                         + (f", {empty} empty answers" if empty else "") + ")")
            for task, a in ev["per_task"].items():
                lines.append(f"  {task:<20}{a:>7.3f}  {_ci(ev['per_task_ci'][task])}")
    reversal = [(name, key[len("reversal_forward_"):], ev, res[f"reversal_backward_"
                                                             f"{key[len('reversal_forward_'):]}"])
                for name, res in results.items() for key, ev in res.items()
                if key.startswith("reversal_forward_")
                and f"reversal_backward_{key[len('reversal_forward_'):]}" in res]
    if reversal:
        lines.append("\nReversal: facts the pretraining text states one way only, asked "
                     "forward and backward (exact match, 95% interval)")
        w = max(12, 2 + max(len(name) for name, *_ in reversal))   # a path can be long
        lines.append(f"{'model':<{w}}{'decoding':<18}{'forward':>24}{'backward':>24}")
        for name, label, fw, bw in reversal:
            lines.append(f"{name:<{w}}{label:<18}"
                         + "".join(f"{ev['accuracy']:>7.3f} {_ci(ev['accuracy_ci']):>16}"
                                   for ev in (fw, bw)))
    for name, res in results.items():
        curve = res.get(CURVE_KEY)
        if not curve:
            continue
        lines.append(f"\n{name}: open-ended consistency by tokens per forward pass (llada, "
                     "low confidence, one block; 95% interval)")
        lines.append(f"{'tokens/pass':>12}{'consistency':>13}{'interval':>18}"
                     f"{'passes':>9}{'committed/pass':>16}{'n':>6}")
        for k, row in curve.items():
            lines.append(f"{k:>12}{row['consistency']:>13.3f}{_ci(row['consistency_ci']):>18}"
                         f"{row['mean_nfe']:>9.1f}{row['tokens_per_nfe']:>16.2f}{row['n']:>6}")
    return "\n".join(lines)


def _tokens_per_pass_arg(text: str):
    """argparse type of ``--tokens-per-pass``: a positive int or ``all``."""
    import argparse

    if text == "all":
        return "all"
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers or 'all' (the "
                                         "whole answer in one pass)")
    return k


def main_eval(argv=None):
    """``python -m dllm_lesson eval``: held-out accuracy and accuracy against mask ratio,
    each with its 95% Wilson interval; on corpus v2 also open-ended consistency and the
    reversal split. Taught in ``02_llada_training``."""
    import argparse
    import json

    import torch

    from .data import CORPUS_VERSION, VERSIONS

    p = argparse.ArgumentParser(prog="python -m dllm_lesson eval",
                                description=main_eval.__doc__)
    p.add_argument("--model", action="append", help="model name or path (repeatable); "
                   "default: tiny-bert and tiny-dllm")
    p.add_argument("--strategy", default=None, help="decoding strategy (default: greedy, "
                   "duo for Duo models; causal models always use ar)")
    p.add_argument("--steps", type=int, nargs="+", default=None,
                   help="sampler steps, one row per value (e.g. --steps 8 16 32): Duo "
                   "models use the duo sampler, masked models LLaDA's (equal forward passes)")
    p.add_argument("--sampler", default=None, choices=["ancestral", "renoise"],
                   help="Duo models: the ancestral sampler (default) or the seed's "
                   "predict-and-renoise")
    p.add_argument("--corpus-version", type=int, default=CORPUS_VERSION, choices=VERSIONS,
                   help=f"the corpus whose splits are asked (default {CORPUS_VERSION}, the "
                   "shipped models'); 2 adds open_ended, reversal_forward, reversal_backward")
    p.add_argument("--split", action="append", default=None,
                   help="only this split (repeatable); default: every split of the corpus")
    p.add_argument("--task", action="append", default=None,
                   help="only this task (repeatable), in every split that has it")
    p.add_argument("--tokens-per-pass", type=_tokens_per_pass_arg, nargs="+", default=None,
                   help="also the open-ended consistency curve (corpus v2), e.g. "
                   "--tokens-per-pass 1 2 4 8 all (all: the whole answer in one pass)")
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
                             batch_size=args.batch_size, corpus_version=args.corpus_version,
                             splits=args.split, tasks=args.task,
                             tokens_per_pass=args.tokens_per_pass, **extra)
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
            scoring = ("exact match; consistency on open-ended tasks"
                       if args.corpus_version >= 2 else "exact match")
            update_card(model_path(name), res, f"`{cmd.strip()}` on CPU ({split} held-out "
                        f"questions, {scoring})")
    return results
