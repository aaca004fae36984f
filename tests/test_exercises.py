"""Every exercise of every notebook: its check passes on the library's reference solution,
reports a stub as "not solved", and the notebook holds that stub with the check call left
commented (so it runs green unsolved). The per-notebook files (``test_exercises_part*``)
add what is specific: independent solutions that pass, plausible mistakes that fail."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dllm_lesson.exercises import check, exercises

REPO = Path(__file__).resolve().parents[1]
ALL = sorted(exercises())
NOTEBOOK = {  # each exercise and the notebook that poses it
    "fill_order": "00_welcome",
    "demask": "00_welcome",
    "bert_mask_rule": "01_bert_masking",
    "masked_cross_entropy": "01_bert_masking",
    "masked_elbo": "02_llada_training",
    "llada_loss_from_ce": "02_llada_training",
    "sft_maskable": "02_llada_training",
    "greedy_step": "03_greedy_decoding",
    "greedy_decode": "03_greedy_decoding",
    "num_transfer_tokens": "04_block_generation_and_kv_cache",
    "block_decode": "04_block_generation_and_kv_cache",
    "dual_cache_block": "04_block_generation_and_kv_cache",
    "select_positions": "05_remasking_and_parallel_decoding",
    "threshold_commit": "05_remasking_and_parallel_decoding",
    "joint_pair": "05_remasking_and_parallel_decoding",
    "remask_positions": "05_remasking_and_parallel_decoding",
    "flip_probability_v2": "06_duo_gaussian_noise",
    "corrupt_tokens": "06_duo_gaussian_noise",
    "soft_token_loss": "07_soft_tokens",
    "symmetric_kl": "08_duo_loss_scaling",
    "nelbo_by_jumps": "08_duo_loss_scaling",
    "renoise": "09_duo_sampling",
    "uniform_posterior": "09_duo_sampling",
    "dcd_pair": "10_few_step_distillation",
    "ar_decode": "11_ar_vs_diffusion",
    "step_budget": "12_scaling_up",
    "train_flops": "12_scaling_up",
}


def notebook_code(notebook: str) -> str:
    nb = json.loads((REPO / "notebooks" / f"{notebook}.ipynb").read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def test_every_notebook_has_its_exercises():
    assert {name: ex.notebook for name, ex in exercises().items()} == NOTEBOOK
    notebooks = {p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert set(NOTEBOOK.values()) == notebooks


@pytest.mark.parametrize("name", ALL)
def test_reference_passes(name, capsys):
    assert check(name, exercises()[name].reference)
    assert f"{name}: passed" in capsys.readouterr().out


@pytest.mark.parametrize("name", ALL)
def test_stub_is_reported_not_solved(name, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    assert check(name, stub) is False
    assert "not solved" in capsys.readouterr().out


@pytest.mark.parametrize("name", ALL)
def test_notebook_has_stub_and_commented_check(name):
    code = notebook_code(exercises()[name].notebook)
    calls = re.findall(rf'^# check\("{name}", (\w+)\)', code, flags=re.M)
    assert len(calls) == 1, f"one commented check call for {name}, found {calls}"
    stub = re.search(rf"^def {calls[0]}\(.*?(?=^\S)", code + "\n_", flags=re.M | re.S)
    assert stub and "raise NotImplementedError" in stub.group(0)
    assert not re.search(rf'^check\("{name}"', code, flags=re.M)   # not left uncommented


def test_unknown_exercise_is_a_clear_error():
    with pytest.raises(ValueError, match="no exercise named 'nope'; known: "):
        check("nope", lambda: None)


def test_every_exercise_has_a_rejected_wrong_answer():
    """Each checker is shown to reject at least one plausible mistake: a ``fails("name", ...)``
    in test_exercises_part1/2, or a ``("name", ...)`` entry of part3's WRONG list."""
    tested = set()
    for path in sorted((REPO / "tests").glob("test_exercises_part*.py")):
        text = path.read_text()
        tested |= set(re.findall(r'\bfails\(\s*"(\w+)"', text))
        wrong = re.search(r"^WRONG = \[(.*?)^\]", text, flags=re.M | re.S)
        if wrong:
            tested |= set(re.findall(r'^\s*\("(\w+)",', wrong.group(1), flags=re.M))
    assert set(ALL) - tested == set(), "exercises whose checker no test shows rejecting"
