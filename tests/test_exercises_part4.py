"""Notebook 11's exercise: independent solutions pass, plausible mistakes fail, and the
reference is the engine's strategy "ar"."""

from __future__ import annotations

import pytest
import torch

from dllm_lesson.exercises import verify
from dllm_lesson.exercises.part4 import ar_decode


def fails(name, fn):
    with pytest.raises(AssertionError):
        verify(name, fn)


def test_ar_decode_with_generate_passes():
    """transformers' own greedy generate, cut after the end token, is a right answer."""
    def with_generate(model, input_ids, max_new_tokens, end_id):
        out = model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=end_id if end_id >= 0 else None,
                             pad_token_id=0, attention_mask=torch.ones_like(input_ids))
        return out[0, input_ids.shape[1]:].tolist()

    verify("ar_decode", with_generate)


@pytest.mark.parametrize("mistake", ["first_position", "no_stop", "drops_end", "no_append"])
def test_ar_decode_mistakes_fail(mistake):
    def wrong(model, input_ids, max_new_tokens, end_id):
        ids, new = input_ids, []
        for _ in range(max_new_tokens):
            logits = model(input_ids=ids).logits
            pos = 0 if mistake == "first_position" else -1
            nxt = int(logits[0, pos].argmax())
            if nxt == end_id and mistake == "drops_end":
                break
            new.append(nxt)
            if nxt == end_id and mistake != "no_stop":
                break
            if mistake != "no_append":
                ids = torch.cat([ids, ids.new_tensor([[nxt]])], dim=1)
        return new

    fails("ar_decode", wrong)


def test_ar_decode_is_the_engines_ar_strategy():
    """The reference and the engine's strategy "ar" write the same tokens, on a causal
    model trained for a few steps (so it meets its end token)."""
    from dllm_lesson.sampling import build_sequence, decode_steps
    from dllm_lesson.training import TrainConfig, init_model

    torch.set_num_threads(1)
    model, tok = init_model(TrainConfig(objective="ar", model="scratch", model_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        global_attn_every_n_layers=2, local_attention=16)))
    model.eval()
    for prompt in ("What is the capital of Kenya?", "Name two animals."):
        last = list(decode_steps(model, tok, prompt, answer_length=10, strategy="ar"))[-1]
        ids, start = build_sequence(tok, prompt, 10)
        want = ar_decode(model, ids[:, :start], 10, tok.sep_token_id)
        assert list(last.tokens[:len(want)]) == want
