"""Shared fixtures. Tests never touch the network: the hub is switched to offline mode
before anything imports huggingface_hub (notebook kernels inherit it too)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a busy 2-core machine: one torch thread is many times faster.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def corpus():
    """The offline corpus for seed 0 (built once per session)."""
    from dllm_lesson.data import build_corpus

    return build_corpus(0)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A folder with the course tokenizer, trained once per session."""
    from dllm_lesson.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def course_tokenizer(tokenizer_dir):
    """The course tokenizer, loaded back the way users load it (``AutoTokenizer``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def make_tiny_modernbert(out_dir, tokenizer=None, vocab_size=None, seed=0):
    """Save a random 2-layer, 32-wide ``ModernBertForMaskedLM`` (and ``tokenizer`` if
    given) to ``out_dir`` in Hugging Face format; return the folder."""
    import torch
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    vocab_size = vocab_size or len(tokenizer)
    config = ModernBertConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=128, global_attn_every_n_layers=2,
        local_attention=16, pad_token_id=0, cls_token_id=2, sep_token_id=3,
        bos_token_id=2, eos_token_id=3)
    torch.manual_seed(seed)
    model = ModernBertForMaskedLM(config)
    model.save_pretrained(str(out_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="session")
def tiny_modernbert_dir(tmp_path_factory, course_tokenizer):
    """A random tiny ModernBERT with the course tokenizer, in Hugging Face format.

    Session-scoped: copy it before changing its files.
    """
    return make_tiny_modernbert(tmp_path_factory.mktemp("tiny-modernbert"),
                                course_tokenizer)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for every browser test of the session (JupyterLab's in
    test_browser.py, the built site's in test_site.py): Playwright's sync API runs one event
    loop, so a second ``sync_playwright()`` cannot start while the first is open."""
    from test_browser import CHROMIUM_ARGS, SKIP_REASON, chromium_path, missing_browser_tools

    why = missing_browser_tools()
    if why:
        pytest.skip(f"{why}: {SKIP_REASON}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
