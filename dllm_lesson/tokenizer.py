"""The course tokenizer: byte-level BPE trained on the offline corpus, with a chat template.

Special tokens follow ModernBERT: ``[PAD] [UNK] [CLS] [SEP] [MASK]``. ``[CLS]`` starts a
sequence and ``[SEP]`` ends an answer (it is the end token the models learn to emit).
The chat template marks the assistant's tokens with ``{% generation %}``, so the seed's
call works unchanged::

    tokenizer.apply_chat_template([{"content": prompt}, {"content": answer}],
        return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt")

Messages may lack roles: they then alternate user / assistant.
Taught in ``00_welcome``.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB_SIZE = 4096
#: the corpus the course tokenizer is trained on. Pinned: every shipped model (v1 and v2
#: builds alike) uses the tokenizer of corpus v1 (2788 tokens), which spells v2's text too;
#: training it on v2's texts would give another vocabulary and orphan every checkpoint.
TOKENIZER_CORPUS_VERSION = 1

#: Jinja chat template shared by the tiny models and any hub tokenizer that has none.
#: The answer and its end token ``[SEP]`` sit inside ``{% generation %}``.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if 'role' in message -%}{%- set role = message['role'] -%}"
    "{%- else -%}{%- set role = ['user', 'assistant'][loop.index0 % 2] -%}{%- endif -%}"
    "{%- if loop.first -%}{{ cls_token }}{%- endif -%}"
    "{%- if role == 'assistant' -%}"
    "{{ 'Assistant:' }}{% generation %}"
    "{%- if not message['content'].startswith(mask_token) %}{{ ' ' }}{% endif -%}"
    "{{ message['content'] }}{{ sep_token }}{% endgeneration %}"
    "{%- else -%}{{ role | capitalize }}: {{ message['content'] }}{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)


#: What stands for a control character: U+2303 (⌃) then its caret letter, so ``"\x1a"``
#: shows as ``⌃Z`` and ``"\x00"`` as ``⌃@`` (DejaVu, matplotlib's font, has these glyphs,
#: not the Control Pictures block)
CONTROL_MARK = "\u2303"


def visible_text(text: str) -> str:
    """``text`` with every invisible or control character replaced by a visible glyph.

    Byte-level BPE pieces of random tokens (Duo's noise, an untrained model's guesses)
    decode to control characters and to U+FFFD, the replacement character of bytes that
    are not valid UTF-8 on their own. For display: ``"\n"`` and ``"\t"`` are kept (the
    callers show line breaks their own way); a C0 control or DEL becomes ``⌃`` and its
    caret letter (``"\x19"`` -> ``⌃Y``, ``"\x00"`` -> ``⌃@``, ``"\x7f"`` -> ``⌃?``); U+FFFD
    stays the glyph ``�`` (a visible character, not an escape); any other unprintable
    code point (C1 controls, format characters, surrogates, unassigned) becomes
    ``<U+XXXX>``. Used by the de-masking players and the terminal renderer.

    Taught in ``09_duo_sampling``.
    """
    if not isinstance(text, str):
        raise TypeError(f"visible_text takes a str, got {type(text).__name__}")
    out = []
    for ch in text:
        code = ord(ch)
        if ch in "\n\t" or ch == "\ufffd":
            out.append(ch)
        elif code < 0x20 or code == 0x7F:
            out.append(CONTROL_MARK + chr(code ^ 0x40))
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(f"<U+{code:04X}>")
        else:
            out.append(ch)
    return "".join(out)


def train_tokenizer(texts, vocab_size: int = VOCAB_SIZE):
    """Train a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    Taught in ``00_welcome``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size > VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at most {VOCAB_SIZE}, got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", bos_token="[CLS]", eos_token="[SEP]",
        model_max_length=512, clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def corpus_texts(seed: int = 0, version: int = TOKENIZER_CORPUS_VERSION) -> list[str]:
    """Every text of the offline corpus (pretraining text, prompts and answers)."""
    from .data import build_corpus

    corpus = build_corpus(seed, version=version)
    texts = list(corpus.pretrain)
    for rows in corpus.splits().values():
        for ex in rows:
            texts += [ex.prompt, ex.answer]
    texts += [f"User: x\nAssistant:\n{t}" for t in ("a", "b")]  # the template's words
    return texts


def build_tokenizer(out_dir: str | Path | None = None, seed: int = 0):
    """Train the course tokenizer on the offline corpus; save it if ``out_dir`` is given."""
    tok = train_tokenizer(corpus_texts(seed))
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def ensure_chat_template(tokenizer):
    """Give a tokenizer without a chat template (ModernBERT's, say) the course's one."""
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.mask_token is None:
        raise ValueError("this tokenizer has no mask token: masked diffusion needs one "
                         "(ModernBERT's and BERT's tokenizers have [MASK])")
    return tokenizer
