"""Exercises of part 4 (notebook 11, autoregressive vs masked diffusion): references and
checks. In a notebook::

    from dllm_lesson.exercises import check
    # check("ar_decode", ar_decode)

=========  ===================  ==================================================
exercise   notebook             what you write
=========  ===================  ==================================================
ar_decode  11_ar_vs_diffusion   greedy left-to-right decoding with a causal LM
=========  ===================  ==================================================
"""

from __future__ import annotations

import torch

from . import exercise


@torch.inference_mode()
def ar_decode(model, input_ids: torch.Tensor, max_new_tokens: int, end_id: int) -> list[int]:
    """Greedy decoding with a causal LM, one token per forward pass.

    ``input_ids`` (1, L) is the prompt. Each step runs the model on the whole sequence so
    far, takes the argmax of the logits at the LAST position (the prediction of the next
    token), appends it, and stops after ``end_id`` or ``max_new_tokens`` tokens. Returns the
    new ids as a list (the end token included when it came). The course engine's strategy
    ``"ar"`` does the same inside its answer area (``sampling.decode_steps``).
    Taught in ``11_ar_vs_diffusion``.
    """
    ids, new = input_ids, []
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids).logits                          # (1, L, V)
        nxt = int(logits[0, -1].argmax())
        new.append(nxt)
        if nxt == end_id:
            break
        ids = torch.cat([ids, ids.new_tensor([[nxt]])], dim=1)
    return new


def _random_causal_lm(seed: int, vocab: int = 40):
    from transformers import ModernBertDecoderConfig, ModernBertDecoderForCausalLM

    torch.manual_seed(seed)
    config = ModernBertDecoderConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
        global_attn_every_n_layers=2, local_attention=16)
    return ModernBertDecoderForCausalLM(config).eval()


@exercise("ar_decode", "11_ar_vs_diffusion", ar_decode)
def _check_ar_decode(candidate, reference):
    g = torch.Generator().manual_seed(11)
    for seed in range(3):
        model = _random_causal_lm(seed)
        prompt = torch.randint(1, 40, (1, 5 + seed), generator=g)
        free = reference(model, prompt, 12, end_id=-1)      # no end token: all 12 steps
        # an end token that the greedy path meets at step 4: the answer must stop there
        end_id = free[3] if free[3] not in free[:3] else -1
        for n, end in ((12, -1), (12, end_id), (2, end_id)):
            want = reference(model, prompt.clone(), n, end)
            got = candidate(model, prompt.clone(), n, end)
            where = f"ar_decode(prompt={prompt.tolist()}, max_new_tokens={n}, end_id={end})"
            if got is None:
                raise AssertionError(f"{where} returned None: did you forget `return`?")
            got = [int(t) for t in got]
            if got != want:
                raise AssertionError(f"{where}: you return {got}, expected {want}")
