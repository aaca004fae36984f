"""The autoregressive baseline's training: objective "ar" on the same training core."""

from __future__ import annotations

import pytest
import torch

from dllm_lesson import losses, training
from dllm_lesson.training import TrainConfig, read_metrics, train

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=2, global_attn_every_n_layers=2, local_attention=16)


def ar_cfg(out, **kw):
    base = dict(objective="ar", model="scratch", model_config=SMALL, data="chat",
                seq_len=96, batch_size=4, lr=3e-3, warmup_steps=2, max_steps=6, fill_max=8,
                log_every=1, save_every=3, output_dir=str(out), progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_ar_loss_is_transformers_causal_lm_loss():
    """Our next-token loss equals the one transformers' causal LM computes from labels
    (it shifts internally; -100 marks the positions that carry no loss)."""
    from transformers import ModernBertDecoderConfig, ModernBertDecoderForCausalLM

    torch.manual_seed(0)
    model = ModernBertDecoderForCausalLM(ModernBertDecoderConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0))
    x = torch.randint(1, 50, (3, 12))
    mask = torch.rand(3, 12) < 0.6
    mask[:, 0] = False
    out = model(input_ids=x, labels=torch.where(mask, x, -100))
    ours = losses.ar_loss(out.logits, x, mask)
    assert torch.allclose(ours, out.loss, atol=1e-6), (ours, out.loss)
    # and the mask matters: scoring every token gives another value
    assert not torch.allclose(losses.ar_loss(out.logits, x, torch.ones_like(mask)), ours)


def test_ar_training_loss_computes_the_scored_logits_only():
    """The training core runs the causal head only where the next token is scored
    (logits_to_keep): the same loss and the same gradients as from every logit."""
    cfg = ar_cfg("unused")
    model, tok = training.init_model(cfg)
    torch.manual_seed(0)
    x = torch.randint(5, len(tok), (3, 16))
    lm = torch.zeros(3, 16, dtype=torch.bool)
    lm[0, 9:], lm[1, 4:12], lm[2, 14:] = True, True, True
    batch = {"input_ids": x, "attention_mask": torch.ones_like(x), "loss_mask": lm}
    calls = []
    hook = model.decoder.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    sparse = training.step_loss(cfg, model, batch, 0, tok, None, torch.Generator(), "chat")
    hook.remove()
    assert calls == [(int(lm[:, 1:].sum()), len(tok))]      # 7 + 8 + 2 rows of logits
    g_sparse = torch.autograd.grad(sparse, list(model.parameters()), allow_unused=True)
    full = losses.ar_loss(model(input_ids=x).logits, x, lm)
    g_full = torch.autograd.grad(full, list(model.parameters()), allow_unused=True)
    assert torch.allclose(sparse, full, atol=1e-6)
    for a, b in zip(g_sparse, g_full):
        if a is not None:
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_ar_model_has_the_masked_models_shape():
    """A fair baseline: the causal model built for the tiny preset has the same parameter
    count as the masked one (same hidden size, layers, heads, vocabulary)."""
    masked, tok = training.init_model(TrainConfig(objective="llada", model="scratch"))
    causal, _ = training.init_model(TrainConfig(objective="ar", model="scratch"))
    assert type(causal).__name__ == "ModernBertDecoderForCausalLM"
    n_m = sum(p.numel() for p in masked.parameters())
    n_c = sum(p.numel() for p in causal.parameters())
    assert abs(n_c - n_m) <= 0.1 * n_m, (n_c, n_m)


@pytest.mark.parametrize("data,text_mix", [("chat", 0.5), ("text", 0.0)])
def test_ar_trains_and_resumes_exactly(tmp_path, data, text_mix):
    kw = dict(data=data, text_mix=text_mix)
    train(ar_cfg(tmp_path / "full", **kw))

    def crash(rec):
        if rec["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(ar_cfg(tmp_path / "part", **kw), callback=crash)
    train(ar_cfg(tmp_path / "part", **kw))
    a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "full")}
    b = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "part")}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert abs(a[step] - b[step]) <= 1e-4, (step, a[step], b[step])
    assert a[6] < a[1]  # it learns


def test_objective_and_checkpoint_kind_must_agree(tmp_path):
    with pytest.raises(ValueError, match="'ar' trains a causal LM but 'tiny-dllm' is a masked"):
        training.init_model(TrainConfig(objective="ar", model="tiny-dllm"))
    with pytest.raises(ValueError, match="objective must be one of"):
        TrainConfig(objective="gpt")


def test_corpus_version_is_a_config_field(tmp_path):
    """Training on corpus v2 is one field; a bad version is one clear error."""
    rows = training.load_rows(TrainConfig(corpus_version=2), training.init_model(
        TrainConfig(objective="ar", model="scratch"))[1], "chat")
    assert len(rows) > 4000
    with pytest.raises(ValueError, match="corpus_version must be one of"):
        TrainConfig(corpus_version=7)


# -- strategy "ar": the engine decodes the causal baseline -------------------------------
@pytest.fixture(scope="module")
def causal_model():
    """A small causal LM on the course tokenizer (random weights: the tests compare
    decoding procedures, not answers)."""
    model, tok = training.init_model(TrainConfig(objective="ar", model="scratch",
                                                 model_config=SMALL, seed=3))
    return model.eval(), tok


PROMPTS = ["What is the capital of Kenya?", "Name two countries where Spanish is spoken.",
           "Hi"]


def _reference(model, tok, prompt, answer_length):
    """Plain left-to-right greedy decoding with transformers' own generate(): the prompt
    through 'Assistant:', then up to answer_length new tokens, [MASK] banned, stop at
    [SEP]."""
    from dllm_lesson.sampling import build_sequence

    ids, a0 = build_sequence(tok, prompt, answer_length)
    out = model.generate(ids[:, :a0], attention_mask=torch.ones_like(ids[:, :a0]),
                         max_new_tokens=answer_length, do_sample=False,
                         eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
                         bad_words_ids=[[tok.mask_token_id]])
    return out[0, a0:].tolist()


def test_ar_strategy_is_greedy_left_to_right(causal_model):
    from dllm_lesson.sampling import decode_steps

    model, tok = causal_model
    for prompt in PROMPTS:
        steps = list(decode_steps(model, tok, prompt, 12, "ar"))
        ref = _reference(model, tok, prompt, 12)
        got = steps[-1].tokens[:len(ref)]
        assert got == ref, (prompt, got, ref)
        # one token per forward pass, strictly left to right
        assert [s.changed for s in steps] == [[i] for i in range(len(steps))]
        assert [s.nfe for s in steps] == list(range(1, len(steps) + 1))
        if tok.sep_token_id in ref:   # stopped at the end token, the rest filled with it
            assert len(steps) == ref.index(tok.sep_token_id) + 1
            assert set(steps[-1].tokens[len(steps):]) <= {tok.sep_token_id}


def test_ar_batch_rows_equal_prompts_alone(causal_model):
    from dllm_lesson.sampling import generate

    model, tok = causal_model
    alone = [generate(model, tok, p, 10, "ar") for p in PROMPTS]
    assert generate(model, tok, PROMPTS, 10, "ar") == alone


def test_ar_and_masked_strategies_refuse_the_wrong_model(causal_model):
    from dllm_lesson.loading import load_model
    from dllm_lesson.sampling import generate

    model, tok = causal_model
    with pytest.raises(ValueError, match="causal .* use strategy='ar'"):
        generate(model, tok, "Hi", 8, "llada")
    with pytest.raises(ValueError, match="takes no steps, block_length or cache"):
        generate(model, tok, "Hi", 8, "ar", steps=4)
    masked, mtok = load_model("tiny-dllm", device="cpu")
    with pytest.raises(ValueError, match="strategy 'ar' needs a causal LM"):
        generate(masked, mtok, "Hi", 8, "ar")
