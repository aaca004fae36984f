"""The course tokenizer: special tokens, round trips, and the seed's chat-template call."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dllm_lesson.tokenizer import CHAT_TEMPLATE, build_tokenizer, ensure_chat_template

SPECIALS = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}


def test_special_tokens_and_size(course_tokenizer):
    tok = course_tokenizer
    for token, idx in SPECIALS.items():
        assert tok.convert_tokens_to_ids(token) == idx
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (
        0, 2, 3, 4)
    assert tok.eos_token_id == tok.sep_token_id  # answers end at [SEP]
    assert 500 <= len(tok) <= 4096  # a few thousand tokens: fast to train on a CPU
    assert tok.chat_template == CHAT_TEMPLATE  # saved and loaded back with the folder


def test_training_is_deterministic(tokenizer_dir, tmp_path):
    build_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (
        tokenizer_dir / "tokenizer.json").read_bytes()


def test_corpus_round_trip(course_tokenizer, corpus):
    tok = course_tokenizer
    texts = corpus.pretrain[:300] + [t for ex in corpus.sft[::10] for t in (ex.prompt,
                                                                             ex.answer)]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text


def test_corpus_is_compact(course_tokenizer, corpus):
    """BPE trained on the corpus: a fact sentence takes few tokens."""
    n_chars = n_tokens = 0
    for text in corpus.pretrain[:200]:
        n_chars += len(text)
        n_tokens += len(course_tokenizer(text, add_special_tokens=False)["input_ids"])
    assert n_chars / n_tokens > 3.0


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=80))
def test_any_text_round_trips(course_tokenizer, text):
    """Byte-level BPE: every string survives encode/decode, unseen characters too."""
    ids = course_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert course_tokenizer.decode(ids) == text


def test_plain_encoding_adds_cls_and_sep(course_tokenizer):
    ids = course_tokenizer("Paris")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3


# -- the seed's chat-template call ------------------------------------------------------
def seed_call(tok, prompt, answer, roles):
    messages = [{"content": prompt}, {"content": answer}]
    if roles:
        messages = [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": answer}]
    return tok.apply_chat_template(messages, return_dict=True,
                                   return_assistant_tokens_mask=True, return_tensors="pt")


def check_layout(tok, prompt, answer, out):
    """The layout of COURSE.md, checked from the tokens, not from the template."""
    ids = out["input_ids"]  # (1, L)
    mask = out["assistant_masks"]  # (1, L)
    assert isinstance(ids, torch.Tensor) and ids.shape == mask.shape and ids.shape[0] == 1
    ids, mask = ids[0].tolist(), mask[0].tolist()
    # the answer follows "Assistant:" with a space, so its first word is the token it is
    # in a sentence (" Paris", not "Paris")
    answer_ids = tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    n = len(answer_ids)
    # the mask marks exactly the answer's tokens and the final [SEP]: the last n tokens
    assert mask == [0] * (len(ids) - n) + [1] * n
    assert ids[-n:] == answer_ids
    assert tok.decode(ids[:-n]) == f"[CLS]User: {prompt}\nAssistant:"
    assert tok.decode(ids) == f"[CLS]User: {prompt}\nAssistant: {answer}[SEP]"
    assert out["attention_mask"][0].tolist() == [1] * len(ids)


@pytest.mark.parametrize("roles", [False, True], ids=["no_roles", "roles"])
def test_seed_chat_template_call(course_tokenizer, corpus, roles):
    seen = set()
    examples = []
    for ex in corpus.sft:  # one example per task, plus the longest answer
        if ex.task not in seen:
            seen.add(ex.task)
            examples.append((ex.prompt, ex.answer))
    longest = max(corpus.sft, key=lambda ex: len(ex.answer))
    examples.append((longest.prompt, longest.answer))
    examples.append(("Say something new.", "Ünïcode — 🙂, and a new word: zyxquorp."))
    for prompt, answer in examples:
        check_layout(course_tokenizer, prompt, answer,
                     seed_call(course_tokenizer, prompt, answer, roles))


@pytest.mark.parametrize("roles", [False, True], ids=["no_roles", "roles"])
def test_seed_masked_answer(course_tokenizer, roles):
    """The seed's inference call: the answer is n [MASK] tokens; the mask covers them and
    the final [SEP], so ``assistant_mask.nonzero().min()`` is where the answer starts."""
    tok = course_tokenizer
    n = 25
    out = seed_call(tok, "What is the capital of France?", tok.mask_token * n, roles)
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    start = mask.nonzero().min().item()
    assert ids[start:].tolist() == [tok.mask_token_id] * n + [tok.sep_token_id]
    assert mask.sum().item() == n + 1
    assert (ids == tok.mask_token_id).sum().item() == n


def test_messages_without_roles_alternate(course_tokenizer):
    tok = course_tokenizer
    messages = [{"content": "Count from 1 to 3."}, {"content": "1, 2, 3."},
                {"content": "What is the capital of Peru?"},
                {"content": "The capital of Peru is Lima."}]
    out = tok.apply_chat_template(messages, return_dict=True,
                                  return_assistant_tokens_mask=True, return_tensors="pt")
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    assert tok.decode(ids) == ("[CLS]User: Count from 1 to 3.\nAssistant: 1, 2, 3.[SEP]"
                               "User: What is the capital of Peru?\nAssistant: "
                               "The capital of Peru is Lima.[SEP]")
    assert tok.decode(ids[mask.bool()]) == " 1, 2, 3.[SEP] The capital of Peru is Lima.[SEP]"


def test_generation_prompt(course_tokenizer):
    text = course_tokenizer.apply_chat_template([{"content": "Hi?"}], tokenize=False,
                                                add_generation_prompt=True)
    assert text == "[CLS]User: Hi?\nAssistant:"


def test_ensure_chat_template(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tok.chat_template = None
    assert ensure_chat_template(tok).chat_template == CHAT_TEMPLATE
    tok.chat_template = "{{ messages }}"  # a tokenizer's own template is kept
    assert ensure_chat_template(tok).chat_template == "{{ messages }}"
    tok.mask_token = None
    with pytest.raises(ValueError, match="mask"):
        ensure_chat_template(tok)


def test_build_tokenizer_is_the_shipped_one(course_tokenizer):
    # build-models trains tiny-bert from scratch with build_tokenizer(): it must give the
    # vocabulary every shipped checkpoint was trained with (pinned to corpus v1's texts)
    from transformers import AutoTokenizer

    from dllm_lesson.loading import model_path

    for name in ("tiny-bert", "tiny-dllm"):
        shipped = AutoTokenizer.from_pretrained(str(model_path(name)))
        assert shipped.get_vocab() == course_tokenizer.get_vocab(), name
