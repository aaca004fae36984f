"""Precomputed accuracy-against-forward-passes results of the Duo notebooks, and their plot.

Decoding hundreds of held-out questions at six step counts takes minutes, so notebooks
``09_duo_sampling`` and ``10_few_step_distillation`` read the rows that
``notebooks/results/duo_few_steps.py`` wrote (each row from
:func:`dllm_lesson.duo.accuracy_by_passes`). :func:`read_few_step_results` also checks that
each run still describes the shipped weights, so a notebook whose models changed fails
until the file is regenerated.

Taught in ``09_duo_sampling`` and ``10_few_step_distillation``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

__all__ = ["RESULTS", "read_few_step_results", "plot_accuracy_by_passes", "weights_sha256"]

#: the results file (beside the script that regenerates it)
RESULTS = Path(__file__).resolve().parents[1] / "notebooks" / "results" / "duo_few_steps.json"


def weights_sha256(name: str) -> str:
    """The first 12 hex digits of the sha256 of a shipped model's weights file: a results
    file records it, so a notebook can tell when the weights it describes changed."""
    from .loading import model_path

    data = (model_path(name) / "model.safetensors").read_bytes()
    return hashlib.sha256(data).hexdigest()[:12]


def read_few_step_results(path=RESULTS, check_weights: bool = True) -> dict:
    """The results file as a dict: ``runs`` (label -> ``model``, ``options``, ``rows``),
    ``n_questions``, ``steps``, ``command``. With ``check_weights``, a run whose model's
    shipped weights changed since it was measured is an error that names the command to
    rerun.

    Taught in ``09_duo_sampling`` and ``10_few_step_distillation``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python "
                                "notebooks/results/duo_few_steps.py` from the repository root")
    results = json.loads(path.read_text())
    if check_weights:
        stale = [label for label, run in results["runs"].items()
                 if weights_sha256(run["model"]) != run["weights_sha256"]]
        if stale:
            raise ValueError(f"{path.name}: the shipped weights changed since these runs were "
                             f"measured: {stale}; rerun `{results['command']}`")
    return results


def plot_accuracy_by_passes(runs: dict, labels=None, ax=None,
                            title: str = "accuracy against forward passes"):
    """Accuracy (with its 95% interval as error bars) against forward passes, one line per
    run, log-2 x axis. ``runs``: :func:`read_few_step_results`'s ``runs``. Returns the
    figure.

    Taught in ``09_duo_sampling`` and ``10_few_step_distillation``.
    """
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=(6.8, 3.8), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    for i, label in enumerate(labels or list(runs)):
        rows = runs[label]["rows"]
        x = [r["mean_nfe"] * (1 + 0.04 * (i - 1.5)) for r in rows]   # a small dodge
        y = [100 * r["accuracy"] for r in rows]
        err = [[100 * (r["accuracy"] - r["ci95"][0]) for r in rows],
               [100 * (r["ci95"][1] - r["accuracy"]) for r in rows]]
        ax.errorbar(x, y, yerr=err, marker="o", markersize=4, capsize=3, label=label)
    steps = [r["steps"] for r in next(iter(runs.values()))["rows"]]
    ax.set_xscale("log", base=2)
    ax.set_xticks(steps, [str(k) for k in steps])
    ax.set_ylim(-2, 102)
    ax.set_xlabel("forward passes per answer")
    ax.set_ylabel("held-out accuracy, % (95% interval)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig
