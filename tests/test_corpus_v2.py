"""Corpus v2: questions in many words, open-ended tasks, the reversal split."""

from __future__ import annotations

import random
import re

import pytest

from dllm_lesson import phrasing
from dllm_lesson.data import (
    N_REVERSAL,
    OPEN_ENDED_TASKS,
    build_corpus,
    consistent,
    load_chat_dataset,
)
from dllm_lesson.facts import COUNTRIES

COUNTRY_TASKS = ("capital", "continent", "language", "country_of_capital")


@pytest.fixture(scope="module")
def v2():
    return build_corpus(0, version=2)


def test_v1_is_unchanged_by_v2():
    """v1 (the corpus of the course's first models) must not move: its hash for seed 0,
    recorded when v2 was added; v2's, recorded when the v2 models were built."""
    assert build_corpus(0, version=1).fingerprint() == "890fea1150c82cbc"
    assert build_corpus(0, version=2).fingerprint() == "b86457eea2e8a038"


def test_deterministic_and_seeded(v2):
    assert build_corpus(0, version=2).fingerprint() == v2.fingerprint()
    assert build_corpus(1, version=2).fingerprint() != v2.fingerprint()


def test_unknown_version_is_one_clear_error():
    with pytest.raises(ValueError, match=r"unknown corpus version 4; choose one of \(1, 2, 3\)"):
        build_corpus(0, version=4)


@pytest.mark.parametrize("task", COUNTRY_TASKS)
def test_twenty_templates_and_heldout_cores(task):
    assert phrasing.n_templates(task) >= 20
    assert len(phrasing.train_cores(task)) >= 10
    assert set(phrasing.train_cores(task)).isdisjoint(phrasing.heldout_cores(task))


def _core_regex(core: str) -> re.Pattern:
    """A regex that finds ``core`` (filled with any entity) inside a composed question,
    whatever the variants did to case and final punctuation (typos aside)."""
    body = re.escape(core.rstrip("?.")).replace(r"\{country\}", ".+").replace(
        r"\{capital\}", ".+")
    return re.compile(body, re.IGNORECASE)


@pytest.mark.parametrize("task", COUNTRY_TASKS)
def test_sft_never_uses_a_heldout_core(v2, task):
    held = [_core_regex(c) for c in phrasing.heldout_cores(task)]
    sft = [e.prompt for e in v2.sft if e.task == task]
    assert sft and not [p for p in sft if any(r.search(p) for r in held)]
    # while the phrasing split uses only held-out cores (typos may hide a few)
    ph = [e.prompt for e in v2.heldout_phrasings if e.task == task]
    found = sum(any(r.search(p) for r in held) for p in ph)
    assert found >= 0.85 * len(ph)


def test_questions_vary_in_surface_form(v2):
    prompts = [e.prompt for e in v2.sft if e.task in COUNTRY_TASKS]
    assert len(set(prompts)) > 0.9 * len(prompts)
    assert any(p[-1] not in "?." for p in prompts)  # no final mark
    assert any(p[:1].islower() for p in prompts)  # lower case
    assert any("'s " in p or "What's" in p or "what's" in p for p in prompts)
    assert any(p.startswith(("Hi!", "Hello.", "Quick question")) for p in prompts)


def test_typo_keeps_the_entity_and_changes_one_word():
    rng = random.Random(0)
    text = "Which city is the capital of Bosnia and Herzegovina?"
    for _ in range(50):
        t = phrasing.add_typo(text, rng, protect=("Bosnia and Herzegovina",))
        assert "Bosnia and Herzegovina" in t and len(t) == len(text)
        assert sum(a != b for a, b in zip(t.split(), text.split())) == 1


def test_lower_case_keeps_entity_names():
    assert phrasing.lower_except("What Is The Capital of South Korea?", ("South Korea",)) \
        == "what is the capital of South Korea?"


def test_heldout_entities_never_in_sft(v2):
    sft = {(e.task, e.entity) for e in v2.sft}
    for e in v2.heldout_entities:
        if e.task in COUNTRY_TASKS:
            assert (e.task, e.entity) not in sft


def test_reversal_facts_are_stated_one_way_only(v2):
    countries = {c[0]: c for c in COUNTRIES}
    names = {e.entity for e in v2.reversal_forward}
    assert len(names) == N_REVERSAL and names == {e.entity for e in v2.reversal_backward}
    text = "\n".join(v2.pretrain)
    sft_text = "\n".join(e.prompt + " " + e.answer for e in v2.sft)
    for name in names:
        capital = countries[name][1]
        assert f"The capital of {name} is {capital}." in text  # forward: stated
        assert f"{capital} is the capital" not in text  # backward: never stated
        assert capital not in sft_text  # never asked, answered or described in SFT
    # the backward question asks for the country, from the capital
    e = v2.reversal_backward[0]
    assert e.keys == (e.entity,) and countries[e.entity][1] in e.prompt


def test_open_ended_checker_accepts_right_and_rejects_mixed_answers(v2):
    assert set(OPEN_ENDED_TASKS) == {e.task for e in v2.open_ended}
    assert len(v2.open_ended) >= 200
    for e in v2.open_ended + [x for x in v2.sft if x.task in OPEN_ENDED_TASKS]:
        assert consistent(e.task, e.entity, e.answer), e
    assert consistent("pair_capital", "Europe", "The capital of France is Paris.")
    # two right answers mixed into a wrong one, as parallel decoding does
    assert not consistent("pair_capital", "Europe", "The capital of France is Rome.")
    assert not consistent("pair_capital", "Asia", "The capital of France is Paris.")
    assert consistent("pair_sound", "", "A dog barks.")
    assert not consistent("pair_sound", "", "A dog meows.")
    assert consistent("two_countries", "Spanish", "Chile and Peru.")
    assert not consistent("two_countries", "Spanish", "Chile and Chile.")
    assert not consistent("two_countries", "Spanish", "Chile and Brazil.")
    with pytest.raises(ValueError, match="unknown open-ended task"):
        consistent("pair_colour", "", "x")


def test_open_ended_sft_shows_many_answers_per_question(v2):
    answers: dict[tuple, set] = {}
    for e in v2.sft:
        if e.task in OPEN_ENDED_TASKS:
            answers.setdefault((e.task, e.entity), set()).add(e.answer)
    assert min(len(a) for a in answers.values()) >= 4


def test_load_v2_splits_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    ds = load_chat_dataset(split="reversal_backward", version=2)
    assert len(ds) == 4 * N_REVERSAL and "messages" in ds.column_names
    with pytest.raises(ValueError, match="unknown split 'open_ended' of the offline corpus v1"):
        load_chat_dataset(split="open_ended", version=1)


def test_heldout_answers_not_stated_in_sft_but_the_known_leak(v2):
    """No SFT answer states a held-out entity's answer, except the one leak found after the
    v2 models were built (``data.NOT_HELD_OUT``), which ``eval`` leaves out by default."""
    from dllm_lesson.data import NOT_HELD_OUT
    from dllm_lesson.evaluate import held_out_examples

    everything = "\n||\n".join(ex.answer for ex in v2.sft)
    leaked = {ex.task for ex in v2.heldout_entities
              if ex.task not in ("count", "describe_many") and ex.answer in everything}
    assert leaked == set(NOT_HELD_OUT[2]["heldout_entities"]) == {"sound"}
    for split in ("reversal_forward", "reversal_backward"):
        assert not [ex for ex in getattr(v2, split) if ex.answer in everything], split
    asked = {ex.task for ex in held_out_examples("heldout_entities", version=2)}
    assert "sound" not in asked and {"capital", "describe", "legs"} <= asked
    assert {ex.task for ex in held_out_examples("heldout_entities", version=1)} >= {"sound"}
    from dllm_lesson.evaluate import SHORT_TASKS, not_leaked
    assert not_leaked(SHORT_TASKS, version=2) == tuple(t for t in SHORT_TASKS if t != "sound")
    assert not_leaked(SHORT_TASKS, version=1) == SHORT_TASKS
    assert not_leaked(("sound",), "heldout_phrasings", version=2) == ("sound",)


# -- corpus v3: v2's chat splits, pretraining in many wordings, no pair_sound leak ---------
@pytest.fixture(scope="module")
def v3():
    return build_corpus(0, version=3)


def test_v3_keeps_v2_chat_splits_but_the_pair_sound_answers(v2, v3):
    # pinned like v1's and v2's: a v3 build's stage records name this corpus
    assert build_corpus(0, version=3).fingerprint() == v3.fingerprint() == "168837233427e3e7"
    for name, rows in v2.splits().items():
        other = v3.splits()[name]
        assert len(rows) == len(other)
        changed = {(a.task, a.prompt) for a, b in zip(rows, other) if a.to_row() != b.to_row()}
        assert {task for task, _ in changed} <= {"pair_sound"}, name
        assert [a.prompt for a in rows] == [b.prompt for b in other], name
    assert v3.pretrain != v2.pretrain


def test_v3_sft_states_no_heldout_answer(v3):
    """The v2 leak is gone: no SFT answer states a held-out entity's answer."""
    from dllm_lesson.data import NOT_HELD_OUT
    from dllm_lesson.evaluate import held_out_examples

    everything = "\n||\n".join(ex.answer for ex in v3.sft)
    assert not [ex for ex in v3.heldout_entities
                if ex.task not in ("count", "describe_many") and ex.answer in everything]
    assert 3 not in NOT_HELD_OUT
    assert "sound" in {ex.task for ex in held_out_examples("heldout_entities", version=3)}
    sounds = [ex for ex in v3.open_ended if ex.task == "pair_sound"]
    assert sounds and all(consistent(ex.task, ex.entity, ex.answer) for ex in sounds)


def test_v3_states_facts_in_many_wordings_and_reversal_facts_one_way(v3):
    from dllm_lesson.data import FACT_WORDINGS, V3_ROUNDS

    text = "\n".join(v3.pretrain)
    reversal = {e.entity for e in v3.reversal_forward}
    for country, capital, continent, language in COUNTRIES:
        fields = dict(country=country, capital=capital, continent=continent,
                      language=language)
        forward = [w.format(**fields) for w in FACT_WORDINGS["capital_forward"]]
        backward = [w.format(**fields) for w in FACT_WORDINGS["capital_backward"]]
        said = sum(text.count(sentence) for sentence in forward + backward)
        assert said >= 2 * V3_ROUNDS, country       # two wordings in every round
        if country in reversal:
            assert not any(sentence in text for sentence in backward), country
        assert len({w for w in forward + backward if w in text}) >= 4, country
    # words a reader's question may use appear in plain text, the held-out cores do not
    assert "seat of government" in text and "dominant language" in text
    for task, cores in phrasing.CORES.items():
        for core in phrasing.heldout_cores(task):
            head = core.split("{")[0].strip()
            if len(head) > 12:
                assert head not in text, core
