"""The offline corpus v1 (the first shipped models' world): deterministic files,
well-formed rows, and no leakage from the held-out splits into SFT. Corpus v2, the world
of today's models, is tested in test_corpus_v2.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from dllm_lesson.data import N_HELDOUT_PHRASINGS, QUESTIONS, build_corpus, write_corpus

ROOT = Path(__file__).resolve().parents[1]
FILES = ["heldout_entities.jsonl", "heldout_phrasings.jsonl", "pretrain.jsonl", "sft.jsonl"]
# one answer states one entity's facts; describe_many answers are describe paragraphs
FAMILY = {"describe_many": "describe"}


@pytest.fixture(scope="module")
def corpus():
    """Corpus v1 for seed 0."""
    return build_corpus(0, version=1)


def family(task: str) -> str:
    return FAMILY.get(task, task)


def read_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- determinism ------------------------------------------------------------------------
def test_same_seed_gives_byte_identical_files(tmp_path):
    a = read_files(write_corpus(tmp_path / "a", seed=0, version=1))
    b = read_files(write_corpus(tmp_path / "b", seed=0, version=1))
    assert sorted(a) == FILES
    assert a == b
    # another process with another hash seed (set iteration order changes) agrees
    code = ("import sys; from dllm_lesson.data import write_corpus; "
            "write_corpus(sys.argv[1], version=1)")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], check=True,
                   cwd=ROOT, env=env)
    assert read_files(tmp_path / "c") == a


def test_other_seed_gives_other_files(tmp_path):
    a = read_files(write_corpus(tmp_path / "a", seed=0, version=1))
    b = read_files(write_corpus(tmp_path / "b", seed=1, version=1))
    assert a["sft.jsonl"] != b["sft.jsonl"] and a["pretrain.jsonl"] != b["pretrain.jsonl"]


def test_rows_are_well_formed(tmp_path):
    folder = write_corpus(tmp_path, seed=0, version=1)
    for line in (folder / "pretrain.jsonl").read_text(encoding="utf-8").splitlines():
        assert set(json.loads(line)) == {"text"}
    for name in FILES[:2] + ["sft.jsonl"]:
        lines = (folder / name).read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines]
        assert rows, name
        for row in rows:
            user, assistant = row["messages"]
            assert (user["role"], assistant["role"]) == ("user", "assistant")
            assert user["content"].strip() and assistant["content"].strip()
            for key in row["keys"]:  # what a correct answer must contain
                assert key in assistant["content"], (key, assistant["content"])


# -- no leakage between splits ------------------------------------------------------------
def test_no_heldout_task_entity_pair_in_sft(corpus):
    sft_pairs = {(ex.task, ex.entity) for ex in corpus.sft}
    leaked = [(ex.task, ex.entity) for ex in corpus.heldout_entities
              if (ex.task, ex.entity) in sft_pairs]
    assert not leaked, leaked[:5]
    # held-out phrasings ask about entities SFT did ask about (only the wording is new)
    for ex in corpus.heldout_phrasings:
        if ex.task != "describe_many":
            assert (ex.task, ex.entity) in sft_pairs, (ex.task, ex.entity)


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def test_no_heldout_prompt_in_sft(corpus):
    sft_prompts = {normalise(ex.prompt) for ex in corpus.sft}
    for split in ("heldout_entities", "heldout_phrasings"):
        leaked = [ex.prompt for ex in getattr(corpus, split)
                  if normalise(ex.prompt) in sft_prompts]
        assert not leaked, (split, leaked[:5])


def template_regex(template: str) -> re.Pattern:
    """'What is the capital of {country}?' -> a regex matching any filled-in version."""
    parts = re.split(r"\{\w+\}", template)
    return re.compile("^" + "(.+)".join(re.escape(p) for p in parts) + "$")


def test_heldout_phrasings_never_used_in_sft(corpus):
    """Checked on the prompt text itself, not on the recorded template index."""
    heldout = {task: [template_regex(t) for t in templates[-N_HELDOUT_PHRASINGS:]]
               for task, templates in QUESTIONS.items()}
    for ex in corpus.sft:
        assert not any(r.match(ex.prompt) for r in heldout[ex.task]), ex.prompt
    for ex in corpus.heldout_phrasings:
        assert any(r.match(ex.prompt) for r in heldout[ex.task]), ex.prompt


def test_heldout_entity_facts_not_stated_in_sft_answers(corpus):
    """A held-out entity's answer (its fact) is stated by no SFT answer of the same task,
    nor of any other task (a country whose capital is held out is not described in SFT).
    Counting ranges: no SFT count answer is the held-out one."""
    sft_answers = defaultdict(list)
    for ex in corpus.sft:
        sft_answers[family(ex.task)].append(ex.answer)
    everything = "\n||\n".join(ex.answer for ex in corpus.sft)
    checked = 0
    for ex in corpus.heldout_entities:
        if ex.task == "count":
            assert ex.answer not in sft_answers["count"], ex.prompt
            continue
        if ex.task == "describe_many":
            continue  # its held-out paragraphs are the describe answers checked below
        same_task = [a for a in sft_answers[family(ex.task)] if ex.answer in a]
        assert not same_task, (ex.task, ex.entity, same_task[:2])
        assert ex.answer not in everything, (ex.task, ex.entity)
        checked += 1
    assert checked > 100


def test_heldout_facts_are_in_the_pretraining_text(corpus):
    """Generalisation, not guessing: every held-out fact is stated in the plain text."""
    text = "\n".join(corpus.pretrain)
    missing = [ex.answer for ex in corpus.heldout_entities
               if ex.task not in ("count", "describe_many") and ex.answer not in text]
    assert not missing, missing[:5]


def test_heldout_splits_cover_every_question(corpus):
    tasks = set(QUESTIONS)
    assert {ex.task for ex in corpus.heldout_entities} == tasks
    assert {ex.task for ex in corpus.sft} == tasks
    assert {ex.task for ex in corpus.heldout_phrasings} >= tasks - {"count"}


def test_long_answers_exist(corpus, course_tokenizer):
    """Long generation and block decoding need answers of 250 tokens and more."""
    longest = max(corpus.sft, key=lambda ex: len(ex.answer))
    n_tokens = len(course_tokenizer(longest.answer, add_special_tokens=False)["input_ids"])
    assert n_tokens >= 250
    assert min(len(ex.answer) for ex in corpus.sft) < 20  # and one-word-ish ones


# -- the datasets path ------------------------------------------------------------------
def test_load_chat_dataset_offline(corpus, tmp_path, monkeypatch):
    from dllm_lesson.data import load_chat_dataset

    monkeypatch.setenv("HOME", str(tmp_path))  # corpus_dir caches under ~/.cache
    ds = load_chat_dataset("offline", split="heldout_phrasings", version=1)
    assert len(ds) == len(corpus.heldout_phrasings)
    assert ds[0]["messages"][1]["content"] == corpus.heldout_phrasings[0].answer
    with pytest.raises(ValueError, match="split"):
        load_chat_dataset("offline", split="validation")
