"""Infilling (notebook 11): a masked LM fills a gap between two texts; a causal LM scores
candidate sentences, in padded batches that must not change the scores."""

from __future__ import annotations

import pytest
import torch

from dllm_lesson import load_model
from dllm_lesson.infill import infill_by_scoring, infill_masked, sentence_ids
from dllm_lesson.training import TrainConfig, init_model


def test_masked_infill_on_tiny_dllm():
    torch.set_num_threads(1)
    model, tok = load_model("tiny-dllm")
    for country, capital in (("Kenya", "Nairobi"), ("Peru", "Lima"), ("Japan", "Tokyo")):
        text, passes = infill_masked(model, tok, "The capital of", f" is {capital}.")
        assert (text, passes) == (country, 6)
    with pytest.raises(ValueError, match=">= 1"):
        infill_masked(model, tok, "a", "b", lengths=(0,))


def test_scoring_picks_the_likeliest_sentence_whatever_the_batch():
    """Each candidate's score computed alone (no padding) picks the same answer as the
    padded batches, for every batch size; the passes count candidates."""
    torch.set_num_threads(1)
    model, tok = init_model(TrainConfig(objective="ar", model="scratch", model_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        global_attn_every_n_layers=2, local_attention=16)))
    model.eval()
    cands = ["Kenya", "Peru", "United States", "Bosnia and Herzegovina", "Chad"]

    def alone(c):
        x = torch.tensor([sentence_ids(tok, "The capital of", " " + c, " is Lima.")])
        with torch.no_grad():
            logp = model(input_ids=x).logits.log_softmax(-1)
        return float(logp[0, :-1].gather(-1, x[0, 1:, None]).sum())

    want = max(cands, key=alone)
    for bs in (1, 2, 64):
        assert infill_by_scoring(model, tok, "The capital of", " is Lima.", cands,
                                 batch_size=bs) == (want, len(cands))
    with pytest.raises(ValueError, match="at least one candidate"):
        infill_by_scoring(model, tok, "a", "b", [])
    with pytest.raises(ValueError, match="infill_by_scoring"):
        infill_masked(model, _no_mask(tok), "a", "b")      # a causal LM's way: scoring


def _no_mask(tok):
    import copy

    t = copy.deepcopy(tok)
    t.mask_token = None
    return t
