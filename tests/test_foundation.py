"""The repository itself: layout, packaging, the conda file, the README's quick start,
CI, the pytest / nbval configuration and the syllabus."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["00_welcome", "01_bert_masking", "02_llada_training", "03_greedy_decoding",
             "04_block_generation_and_kv_cache", "05_remasking_and_parallel_decoding",
             "06_duo_gaussian_noise", "07_soft_tokens", "08_duo_loss_scaling",
             "09_duo_sampling", "10_few_step_distillation", "11_ar_vs_diffusion",
             "12_scaling_up"]
CONDA_TO_PYPI = {"pytorch": "torch"}


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def readme():
    return (ROOT / "README.md").read_text(encoding="utf-8")


# -- layout --------------------------------------------------------------------------------
def test_layout():
    for folder in ("notebooks", "dllm_lesson", "tests", ".ci"):
        assert (ROOT / folder).is_dir(), folder
    for file in ("pyproject.toml", "environment.yml", "README.md", ".ci/run",
                 "tests/sanitize.cfg", ".gitignore"):
        assert (ROOT / file).is_file(), file


@pytest.mark.parametrize("script", ["train_dllm.py", "train_flowlm.py"])
def test_root_scripts_run_as_programs(script):
    path = ROOT / script
    if not path.exists():
        pytest.skip(f"{script} is not written yet")
    assert path.read_text(encoding="utf-8").startswith("#!/usr/bin/env python")
    assert os.access(path, os.X_OK), f"chmod +x {script} (the README runs ./{script})"


def test_gitignore_keeps_shipped_models():
    """No .gitignore pattern matches a file of a shipped model (rough gitignore rules:
    a pattern matches the whole path or one of its parts)."""
    shipped = "dllm_lesson/checkpoints/tiny-dllm/model.safetensors"
    for line in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines():
        pattern = line.strip().strip("/")
        if not pattern or pattern.startswith("#"):
            continue
        assert not fnmatch.fnmatch(shipped, pattern), line
        assert not any(fnmatch.fnmatch(part, pattern) for part in shipped.split("/")), line


# -- packaging -----------------------------------------------------------------------------
def test_pyproject(pyproject):
    project = pyproject["project"]
    assert project["name"] == "dllm_lesson"
    assert SpecifierSet(project["requires-python"]) == SpecifierSet(">=3.10")
    runtime = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert {"torch", "transformers", "datasets", "accelerate", "tokenizers", "jupyterlab",
            "ipywidgets", "matplotlib", "tqdm"} <= runtime
    dev = {canonicalize_name(Requirement(r).name)
           for r in project["optional-dependencies"]["dev"]}
    assert {"pytest", "nbval", "hypothesis", "ruff"} <= dev


def test_shipped_models_are_package_data(pyproject):
    patterns = pyproject["tool"]["setuptools"]["package-data"]["dllm_lesson"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert any(fnmatch.fnmatch(f"checkpoints/tiny-dllm/{name}", p) for p in patterns)


def requirements_by_name(lines) -> dict[str, SpecifierSet]:
    out = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(CONDA_TO_PYPI.get(req.name, req.name))
        assert name not in out, f"{name} listed twice"
        out[name] = req.specifier
    return out


def test_environment_file_matches_pyproject(pyproject):
    """environment.yml installs the same packages, with the same version bounds, as
    ``pip install -e .[dev]`` would for its Python version."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    conda, pip = [], []
    python = None
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += [line for line in dep["pip"] if not line.startswith("-")]
            assert "-e ." in dep["pip"], "the conda env installs the package itself"
        elif dep.startswith("python="):
            python = dep.split("=", 1)[1]
        elif dep != "pip":
            conda.append(dep)
    assert python is not None, "environment.yml pins the Python version"
    project = pyproject["project"]
    assert python in SpecifierSet(project["requires-python"])
    env_reqs = requirements_by_name(conda + pip)

    marker_env = {**default_environment(), "python_version": python,
                  "python_full_version": python + ".0"}
    wanted = [Requirement(r) for r in project["dependencies"]
              + project["optional-dependencies"]["dev"]]
    wanted = [r for r in wanted if r.marker is None or r.marker.evaluate(marker_env)]
    expected = requirements_by_name(
        [str(r).split(";")[0] for r in wanted])
    assert env_reqs == expected


# -- README quick start and CI -------------------------------------------------------------
def quick_start(readme: str) -> list[str]:
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quick_start_is_two_commands(readme):
    commands = quick_start(readme)
    assert len(commands) == 2
    assert 'pip install -e ".[dev]"' in commands[0] and "jupyter lab" in commands[0]
    assert commands[1] == "python -m pytest"


def test_ci_runs_the_readme_test_command(readme):
    lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "set -euo pipefail"
    assert lines[-1] == quick_start(readme)[1]
    torch = next(i for i, line in enumerate(lines) if "torch==2.13.0" in line)
    package = next(i for i, line in enumerate(lines)
                   if re.search(r'pip install .*-e "\.\[dev\]"', line))
    assert torch < package, "torch first, or pip pulls a multi-GB CUDA build"


def test_pytest_runs_notebooks_with_nbval(pyproject):
    ini = pyproject["tool"]["pytest"]["ini_options"]
    assert set(ini["testpaths"]) == {"tests", "notebooks"}
    addopts = ini["addopts"]
    assert "--nbval" in addopts
    sanitize = addopts[addopts.index("--nbval-sanitize-with") + 1]
    assert (ROOT / sanitize).is_file()
    markers = {m.split(":")[0] for m in ini["markers"]}
    assert {"browser", "slow"} <= markers


# -- nbval sanitizing ----------------------------------------------------------------------
def sanitize(text: str) -> str:
    from nbval.plugin import get_sanitize_patterns

    patterns = get_sanitize_patterns((ROOT / "tests/sanitize.cfg").read_text("utf-8"))
    assert len(patterns) >= 5
    for regex, replace in patterns:
        text = re.sub(regex, replace, text)
    return text


@pytest.mark.parametrize("a, b", [
    ("loss 0.123456789", "loss 0.12349"),  # long decimals: float noise
    ("tensor([0.1235, 0.5000])", "tensor([0.1231, 0.5003])"),
    ("scale 1.23456e-05", "scale 1.2378e-05"),
    ("took 1.234 s", "took 0.9 s"),  # timings
    ("CPU times: user 1.2 s, sys: 3 ms", "CPU times: user 880 ms, sys: 12 ms"),
    ("3.5 it/s", "12.25 it/s"),
    ("train:  45%|████▌     | 45/100 [00:01<00:02, 30.12it/s, loss=2.31]",
     "train: 100%|██████████| 100/100 [00:13<00:00, 7.5it/s, loss=1.9]"),  # tqdm
    ("<Foo object at 0x7f3a2b1c90>", "<Foo object at 0x55d0aa01>"),  # addresses
])
def test_sanitize_equal(a, b):
    assert sanitize(a) == sanitize(b)


@pytest.mark.parametrize("a, b", [
    ("loss 0.12", "loss 0.13"),  # deliberate short formatting is still compared
    ("accuracy 91.5%", "accuracy 90.5%"),
    ("3 steps", "4 steps"),
    ("Paris", "Lima"),
])
def test_sanitize_keeps_differences(a, b):
    assert sanitize(a) != sanitize(b)


# -- syllabus and notebooks ----------------------------------------------------------------
def syllabus(readme: str) -> list[tuple[str, str]]:
    rows = re.findall(r"^\| \d\d \| \[(\w+)\]\(notebooks/(\w+)\.ipynb\) \|.*\| (\w+) \|$",
                      readme, re.M)
    for name, file, _ in rows:
        assert name == file
    return [(name, status) for name, _, status in rows]


def test_syllabus_lists_every_notebook_and_its_status(readme):
    rows = syllabus(readme)
    assert [name for name, _ in rows] == NOTEBOOKS
    for name, status in rows:
        exists = (ROOT / "notebooks" / f"{name}.ipynb").exists()
        assert status == ("ready" if exists else "planned"), (
            f"README syllabus: mark {name} as {'ready' if exists else 'planned'}")
    stray = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")} - set(NOTEBOOKS)
    assert not stray, f"notebooks missing from the README syllabus: {stray}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_opens_without_kernel_dialog(name):
    """JupyterLab asks for a kernel (and nbval has none) unless the notebook names one."""
    path = ROOT / "notebooks" / f"{name}.ipynb"
    if not path.exists():
        pytest.skip(f"{name} is not written yet")
    metadata = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    assert metadata["kernelspec"]["name"] == "python3"
    assert metadata["kernelspec"]["language"] == "python"
