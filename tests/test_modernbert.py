"""dllm_lesson.modernbert against transformers' ModernBertForMaskedLM, and its KV cache.

Every model here is a random tiny ModernBERT (offline, fast). Weights are drawn large
enough that attention is sharp, so a wrong window, RoPE base or norm shows up in logits.
"""

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from transformers import (
    AutoModelForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    ModernBertModel,
)

from dllm_lesson.modernbert import (
    KVCache,
    ModernBert,
    attention_bias,
    compare_speed,
    layer_is_global,
    rope_thetas,
)

TOL = 1e-4  # parity with transformers, fp32, max abs diff
CACHE_TOL = 1e-5  # a fresh cache vs the full forward, relative to the logits' scale
SPECIAL_IDS = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2,
                   sep_token_id=3)


def tiny_config(**overrides) -> ModernBertConfig:
    """4 layers, global every 2nd, window 8 (|i-j| <= 4): cuts sequences of 20-40."""
    kwargs = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                  num_attention_heads=4, global_attn_every_n_layers=2, local_attention=8,
                  global_rope_theta=1000.0, local_rope_theta=50.0, **SPECIAL_IDS)
    kwargs.update(overrides)
    return ModernBertConfig(**kwargs)


def random_hf(config: ModernBertConfig, seed: int = 0) -> ModernBertForMaskedLM:
    """A transformers model with large random weights (norms and biases too)."""
    torch.manual_seed(seed)
    model = ModernBertForMaskedLM(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                std = 1.0 if "embeddings" in name else 1.5 / p.shape[1] ** 0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
            else:
                base = 1.0 if name.endswith("norm.weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest (and steadiest on a busy machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_cache_close(window: torch.Tensor, full: torch.Tensor) -> None:
    """Equal up to float rounding.

    Not bitwise: BLAS and SDPA may sum a W-row product in another order than the L-row
    one (a 1-row product does), and large random weights amplify those ~1e-7 errors.
    """
    scale = max(1.0, full.abs().max().item())
    torch.testing.assert_close(window, full, rtol=CACHE_TOL, atol=CACHE_TOL * scale)


def save_and_load(hf_model, folder) -> ModernBert:
    hf_model.save_pretrained(folder)
    return ModernBert.from_pretrained(folder)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def padding_mask(batch: int, length: int, g: torch.Generator) -> torch.Tensor:
    """Row 0 right-padded, row 1 left-padded, by at least 6 positions."""
    mask = torch.ones(batch, length, dtype=torch.long)
    cut = int(torch.randint(6, length // 2, (1,), generator=g))
    mask[0, length - cut:] = 0
    if batch > 1:
        mask[1, :cut] = 0
    return mask


# -- parity with transformers ----------------------------------------------------------


@st.composite
def configs(draw):
    heads = draw(st.sampled_from([2, 4]))
    overrides = dict(
        num_hidden_layers=draw(st.integers(2, 4)),
        num_attention_heads=heads,
        intermediate_size=draw(st.sampled_from([24, 48])),
        global_attn_every_n_layers=draw(st.integers(1, 3)),
        local_attention=draw(st.sampled_from([4, 7, 8, 12])),
        global_rope_theta=draw(st.sampled_from([100.0, 1000.0, 160000.0])),
        local_rope_theta=draw(st.sampled_from([10.0, 50.0, 10000.0])),
        attention_bias=draw(st.booleans()),
        mlp_bias=draw(st.booleans()),
        norm_bias=draw(st.booleans()),
        decoder_bias=draw(st.booleans()),
        classifier_bias=draw(st.booleans()),
        tie_word_embeddings=draw(st.booleans()),
        hidden_activation=draw(st.sampled_from(["gelu", "silu"])),
    )
    return tiny_config(**overrides)


@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          phases=[Phase.generate])  # no shrinking: a failure is reported at once
@given(config=configs(), length=st.integers(20, 40), batch=st.integers(1, 2),
       seed=st.integers(0, 1000))
def test_logits_match_transformers(config, length, batch, seed):
    hf = random_hf(config, seed)
    with tempfile.TemporaryDirectory() as folder:
        ours = save_and_load(hf, folder)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(5, config.vocab_size, (batch, length), generator=g)
    mask = padding_mask(batch, length, g)
    soft = torch.softmax(torch.randn(batch, length, config.vocab_size, generator=g), -1)
    embeds = soft @ ours.get_input_embeddings().weight  # (B, L, H) soft tokens
    with torch.no_grad():
        plain = hf(input_ids=x0).logits
        assert plain.abs().max() > 1.0  # not a degenerate model
        assert max_diff(ours(input_ids=x0).logits, plain) <= TOL
        padded = hf(input_ids=x0, attention_mask=mask).logits
        assert max_diff(ours(input_ids=x0, attention_mask=mask).logits, padded) <= TOL
        assert max_diff(padded, plain) > 1e-3  # the padding really hid something
        from_embeds = hf(inputs_embeds=embeds).logits
        assert max_diff(ours(inputs_embeds=embeds).logits, from_embeds) <= TOL
        assert max_diff(ours(inputs_embeds=ours.embed(x0)).logits, plain) <= TOL


def test_sliding_window_changes_logits():
    """The local window really cuts: a far token changes a query only via global layers."""
    hf = random_hf(tiny_config(global_attn_every_n_layers=99, num_hidden_layers=2), 1)
    ours = ModernBert.from_hf(hf)  # layer 0 global, layer 1 local (half window 4)
    x0 = torch.randint(5, 97, (1, 30))
    far = x0.clone()
    far[0, 29] = (x0[0, 29] + 1) % 97
    with torch.no_grad():
        a, b = ours(input_ids=x0).logits, ours(input_ids=far).logits
        assert max_diff(a, hf(input_ids=x0).logits) <= TOL
    assert max_diff(a[0, :10], b[0, :10]) > 1e-4  # global layer 0 reaches position 0
    one_local = random_hf(tiny_config(layer_types=["sliding_attention"],
                                      num_hidden_layers=1), 2)
    ours = ModernBert.from_hf(one_local)
    with torch.no_grad():
        a, b = ours(input_ids=x0).logits, ours(input_ids=far).logits
        assert max_diff(a, one_local(input_ids=x0).logits) <= TOL
    assert max_diff(a[0, :25], b[0, :25]) == 0.0  # |i - 29| > 4: invisible
    assert max_diff(a[0, 25:], b[0, 25:]) > 1e-4  # |i - 29| <= 4: visible


def test_old_style_config_json(tmp_path):
    """Checkpoints written by transformers 4.x: no layer_types, no rope_parameters."""
    config = tiny_config(num_hidden_layers=4, global_attn_every_n_layers=3,
                         global_rope_theta=500.0, local_rope_theta=20.0)
    hf = random_hf(config, 3)
    hf.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("layer_types", "rope_parameters", "transformers_version"):
        saved.pop(key, None)
    saved.update(global_attn_every_n_layers=3, global_rope_theta=500.0,
                 local_rope_theta=20.0, architectures=["ModernBertForMaskedLM"])
    (tmp_path / "config.json").write_text(json.dumps(saved))
    ours = ModernBert.from_pretrained(tmp_path)
    theirs = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert [layer.is_global for layer in ours.layers] == [True, False, False, True]
    x0 = torch.randint(5, 97, (2, 33))
    with torch.no_grad():
        assert max_diff(ours(input_ids=x0).logits, theirs(input_ids=x0).logits) <= TOL


def test_config_helpers_read_both_spellings():
    old = SimpleNamespace(num_hidden_layers=5, global_attn_every_n_layers=2,
                          global_rope_theta=160000.0, local_rope_theta=None)
    assert layer_is_global(old) == [True, False, True, False, True]
    assert rope_thetas(old) == (160000.0, 160000.0)
    new = tiny_config(local_rope_theta=7.0, global_rope_theta=70.0)
    assert rope_thetas(new) == (70.0, 7.0)
    assert layer_is_global(new) == [True, False, True, False]


def test_attention_bias_matches_loops():
    g = torch.Generator().manual_seed(0)
    key_mask = (torch.rand(2, 17, generator=g) > 0.3).long()
    cases = [(0, 17, 3), (5, 7, 2), (16, 1, 4), (0, 17, None), (3, 4, 20)]
    for start, width, half in cases:
        bias = attention_bias(start, width, 17, key_mask, half, torch.float32, "cpu")
        expected = torch.zeros(2, 1, width, 17)
        for b in range(2):
            for q in range(width):
                for j in range(17):
                    near = half is None or abs(start + q - j) <= half
                    if not (near and key_mask[b, j]):
                        expected[b, 0, q, j] = float("-inf")
        assert torch.equal(bias.expand(2, 1, width, 17), expected)
    assert attention_bias(0, 9, 9, None, 8, torch.float32, "cpu") is None  # nothing hidden
    assert attention_bias(0, 9, 9, None, 7, torch.float32, "cpu") is not None


# -- loading -----------------------------------------------------------------------------


def test_from_hf_copies_and_dtypes(tmp_path):
    hf = random_hf(tiny_config(), 4)
    ours = ModernBert.from_hf(hf)
    x0 = torch.randint(5, 97, (1, 25))
    with torch.no_grad():
        before = hf(input_ids=x0).logits
        assert max_diff(ours(input_ids=x0).logits, before) <= TOL
        hf.model.final_norm.weight.mul_(2.0)  # ours holds a copy
        assert max_diff(ours(input_ids=x0).logits, before) <= TOL
    assert ours.decoder.weight is ours.embeddings.tok_embeddings.weight  # tied
    assert (ours.vocab_size, ours.max_position_embeddings) == (97, 8192)
    hf.to(torch.bfloat16).save_pretrained(tmp_path)
    assert ModernBert.from_pretrained(tmp_path).dtype == torch.bfloat16  # dtype "auto"
    as_fp32 = ModernBert.from_pretrained(tmp_path, dtype="float32")
    assert as_fp32.dtype == torch.float32
    assert ModernBert.from_pretrained(tmp_path, device="cpu", dtype=torch.float32).device \
        == torch.device("cpu")


def test_tied_matrix_stored_under_either_name(tmp_path):
    from safetensors.torch import load_file, save_file

    hf = random_hf(tiny_config(), 8)
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert "decoder.weight" not in state  # transformers stores the tied matrix once
    state["decoder.weight"] = state.pop("model.embeddings.tok_embeddings.weight")
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours = ModernBert.from_pretrained(tmp_path)
    x0 = torch.randint(5, 97, (1, 24))
    with torch.no_grad():
        assert max_diff(ours(input_ids=x0).logits, hf(input_ids=x0).logits) <= TOL


def test_bad_inputs_raise_value_errors(tmp_path):
    hf = random_hf(tiny_config(), 5)
    ours = save_and_load(hf, tmp_path / "ok")
    x0 = torch.randint(5, 97, (1, 20))
    with pytest.raises(ValueError, match="exactly one"):
        ours()
    with pytest.raises(ValueError, match="exactly one"):
        ours(input_ids=x0, inputs_embeds=ours.embed(x0))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        ours(input_ids=x0[0])
    with pytest.raises(ValueError, match="attention_mask"):
        ours(input_ids=x0, attention_mask=torch.ones(1, 19))
    _, cache = ours.build_cache(x0)
    with pytest.raises(ValueError, match="window"):
        ours.forward_window(x0[:, :5], 18, cache)
    with pytest.raises(ValueError, match="batch"):
        ours.forward_window(x0.repeat(2, 1)[:, :5], 0, cache)
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        ModernBert.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="dtype"):
        ModernBert.from_pretrained(tmp_path / "ok", dtype="float33")
    with pytest.raises(ValueError, match="ModernBertForMaskedLM"):
        ModernBert.from_hf(torch.nn.Linear(2, 2))
    ModernBertModel(tiny_config()).save_pretrained(tmp_path / "no_head")
    with pytest.raises(ValueError, match="Not a ModernBertForMaskedLM checkpoint"):
        ModernBert.from_pretrained(tmp_path / "no_head")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="only knows ModernBERT"):
        ModernBert.from_pretrained(bert)


# -- KV cache ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cached_setup():
    hf = random_hf(tiny_config(), 6)
    ours = ModernBert.from_hf(hf)
    g = torch.Generator().manual_seed(6)
    x0 = torch.randint(5, 97, (2, 36), generator=g)
    return hf, ours, x0


WINDOWS = [(0, 36), (12, 36), (12, 20), (35, 36), (0, 5)]


@pytest.mark.parametrize("padded", [False, True])
def test_fresh_cache_equals_full_forward(cached_setup, padded):
    _, ours, x0 = cached_setup
    mask = padding_mask(2, 36, torch.Generator().manual_seed(1)) if padded else None
    full = ours(input_ids=x0, attention_mask=mask).logits  # (B, L, V)
    logits, cache = ours.build_cache(x0, mask)
    assert isinstance(cache, KVCache) and cache.length == 36
    assert cache.keys[0].shape == (2, 4, 36, 8) == cache.values[3].shape
    assert_cache_close(logits, full)
    for start, stop in WINDOWS:
        window = ours.forward_window(x0[:, start:stop], start, cache)  # (B, W, V)
        assert window.shape == (2, stop - start, 97)
        assert_cache_close(window, full[:, start:stop])


def test_rebuilt_cache_after_a_change_is_exact(cached_setup):
    hf, ours, x0 = cached_setup
    xt = x0.clone()
    xt[:, 12:20] = 4  # the block changed (e.g. re-masked)
    _, cache = ours.build_cache(xt)  # refreshed on the current sequence
    with torch.no_grad():
        exact = hf(input_ids=xt).logits  # independent reference
    prefix = ours.forward_window(xt[:, 12:], 12, cache.clone())
    dual = ours.forward_window(xt[:, 12:20], 12, cache.clone())
    assert max_diff(prefix, exact[:, 12:]) <= TOL
    assert max_diff(dual, exact[:, 12:20]) <= TOL
    assert_cache_close(prefix[:, :8], dual)


def test_stale_cache_is_an_approximation(cached_setup):
    _, ours, x0 = cached_setup
    _, stale = ours.build_cache(x0)  # built before the block changed
    xt = x0.clone()
    xt[:, 12:20] = 4
    exact = ours(input_ids=xt).logits
    _, fresh = ours.build_cache(xt)
    prefix_cache, dual_cache = stale.clone(), stale.clone()
    prefix = ours.forward_window(xt[:, 12:], 12, prefix_cache)[:, :8]  # (B, 8, V)
    dual = ours.forward_window(xt[:, 12:20], 12, dual_cache)  # (B, 8, V)
    assert torch.isfinite(prefix).all() and torch.isfinite(dual).all()
    assert max_diff(prefix, exact[:, 12:20]) > 1e-3  # the prefix K, V are stale
    assert max_diff(dual, exact[:, 12:20]) > 1e-3  # prefix and suffix are stale
    assert max_diff(prefix, dual) > 1e-3  # the two caches reuse different rows
    # window rows are refreshed in place; layer 0 K, V depend on the token only
    assert max_diff(dual_cache.keys[0][:, :, 12:20], fresh.keys[0][:, :, 12:20]) <= 1e-6
    assert torch.equal(dual_cache.keys[0][:, :, :12], stale.keys[0][:, :, :12])
    # why no exact cache exists: deeper K, V of unchanged positions moved
    assert max_diff(stale.keys[1][:, :, :12], fresh.keys[1][:, :, :12]) > 1e-3
    # a window that covers everything needs nothing from the cache: exact again
    whole = ours.forward_window(xt, 0, stale.clone())
    assert_cache_close(whole, exact)


def test_compare_speed_returns_two_times(tmp_path):
    random_hf(tiny_config(), 7).save_pretrained(tmp_path)
    ours_s, theirs_s = compare_speed(Path(tmp_path), seq_len=16, repeats=2)
    assert ours_s > 0 and theirs_s > 0


@pytest.mark.parametrize("padded", [False, True])
def test_head_at_gives_the_slice_of_the_full_logits(cached_setup, padded):
    """``head_at=(lo, hi)`` runs the head only at positions lo:hi (decoding reads only
    the answer's logits): the same numbers as slicing the full logits, in every path."""
    _, ours, x0 = cached_setup
    mask = padding_mask(2, 36, torch.Generator().manual_seed(1)) if padded else None
    with torch.no_grad():
        full = ours(input_ids=x0, attention_mask=mask, per_row=padded).logits  # (B, L, V)
        part = ours(input_ids=x0, attention_mask=mask, per_row=padded,
                    head_at=(12, 30)).logits
        built, cache = ours.build_cache(x0, mask, per_row=padded, head_at=(12, 30))
        window = ours.forward_window(x0[:, 12:36], 12, cache)               # (B, 24, V)
        head = ours.forward_window(x0[:, 12:36], 12, cache, head_at=(0, 18))
    assert part.shape == built.shape == head.shape == (2, 18, 97)
    assert torch.allclose(part, full[:, 12:30], atol=1e-6)
    assert torch.allclose(built, full[:, 12:30], atol=1e-6)
    assert torch.allclose(head, window[:, :18], atol=1e-6)
