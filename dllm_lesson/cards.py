"""Model cards: the ``README.md`` and ``metrics.json`` of each shipped model.

``build-models`` writes a card when it trains a model (:func:`model_card`); ``eval
--update-card`` merges new measurements into it (:func:`update_card`). Both commands import
this module, and neither imports the other.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

MEASURED_NOTE = ("Measured by these commands; each command's rows replace the rows of the "
                 "same name measured by the commands above it.")


def machine() -> str:
    """Where this process runs: host name, GPU or CPU, torch version."""
    return (f"{platform.node() or 'unknown'} "
            f"({'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}"
            f", torch {torch.__version__})")


def _stage_line(cfg, run: dict | None) -> str:
    corpus = (f" v{cfg.corpus_version}" if cfg.dataset == "offline" else "")
    line = (f"- `{cfg.objective}` on {cfg.dataset}{corpus} {cfg.data}"
            f"{f' (+{cfg.text_mix:.0%} plain-text steps)' if cfg.text_mix else ''}"
            f": {run['steps'] if run else cfg.max_steps} steps x batch "
            f"{cfg.batch_size}, seq {cfg.seq_len}, lr {cfg.lr}")
    reused = f"stage reused from an earlier build: {Path(cfg.output_dir).name}"
    if run is None:   # --reuse without a record: the recipe is known, its figures not
        return f"{line} ({reused})"
    line += (f", {run['tokens']:,} tokens, {run['seconds']:.0f} s wall, final loss "
             f"{run['final_loss']:.4f}")
    if run.get("corpus"):
        line += f", corpus {run['corpus']}"
    if run.get("reused"):
        line += f" ({reused}, on {run.get('built_on', 'an unknown machine')})"
    elif run.get("built_on"):
        line += f" (on {run['built_on']})"
    return line


def model_card(name: str, stages, runs: list[dict | None], metrics: dict, n_params: int,
               how: str = "`python -m dllm_lesson build-models`, right after training",
               causal: bool = False) -> str:
    """A shipped model's card: what it is, how each training stage ran (steps, tokens, wall
    time, final loss, corpus fingerprint, machine) and its measured metrics."""
    kind = ("The course's autoregressive baseline: a tiny causal (left-to-right) ModernBERT "
            "decoder" if causal else "A tiny ModernBERT")
    auto = "AutoModelForCausalLM" if causal else "AutoModelForMaskedLM"
    lines = [f"# {name}", "",
             f"{kind} (Hugging Face format) made by the diffusion-LM course's own "
             "code on its offline generated corpus. Load it with "
             f"`{auto}.from_pretrained(path)` or `dllm_lesson.load_model(\"{name}\")`.", "",
             f"- parameters: {n_params:,}",
             f"- built on: {machine()}",
             "- rebuild: `python -m dllm_lesson build-models`", "", "## Training", ""]
    lines += [_stage_line(cfg, run) for cfg, run in zip(stages, runs)]
    lines += ["", "## Measured", "", MEASURED_NOTE, "", f"- {how}", "", "```",
              json.dumps(metrics, indent=1), "```", ""]
    return "\n".join(lines)


def update_card(folder, metrics: dict, how: str) -> None:
    """Merge new measurements into a model card's "Measured" section and ``metrics.json``
    (e.g. from ``python -m dllm_lesson eval --update-card``): each row of ``metrics``
    replaces the row of the same name, the other rows stay, and ``how`` (the command that
    measured them) is added to the list of commands above the numbers."""
    folder = Path(folder)
    card = (folder / "README.md").read_text()
    head, _, measured = card.partition("## Measured")
    old = folder / "metrics.json"
    merged = json.loads(old.read_text()) if old.exists() else {}
    merged.update(json.loads(json.dumps(metrics)))          # float keys become strings
    hows = [ln[2:] for ln in measured.split("```")[0].splitlines() if ln.startswith("- ")]
    if how not in hows:
        hows.append(how)
    body = ["## Measured", "", MEASURED_NOTE, "", *(f"- {h}" for h in hows), "", "```",
            json.dumps(merged, indent=1), "```", ""]
    (folder / "README.md").write_text(head.rstrip() + "\n\n" + "\n".join(body))
    old.write_text(json.dumps(merged, indent=1) + "\n")
