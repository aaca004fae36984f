"""A compact ModernBERT (masked LM) with a Fast-dLLM style KV cache.

Taught in ``04_block_generation_and_kv_cache``.

This file re-implements transformers' ``ModernBertForMaskedLM`` in about 300 readable
lines. It loads the same checkpoints (the course's tiny models and
``answerdotai/ModernBERT-base`` / ``-large``) and gives the same logits (<= 1e-4 in fp32).
The architecture, top to bottom::

    h = LayerNorm(E[x0])                                  embeddings  (B, L, H)
    for each layer l:                                     pre-norm residual blocks
        h = h + Attn_l(LN(h))          (layer 0: no LN, the embeddings are normed already)
        h = h + Wo(act(u) * g),  [u, g] = Wi(LN(h))       GLU feed-forward
    h = LN(h)                                             final_norm
    logits = LN(act(W_d h)) E^T + b                       head, decoder tied to E (B, L, V)

Attention alternates between *global* layers (every token sees every token, RoPE with
base ``global_rope_theta``) and *local* layers (sliding window, base ``local_rope_theta``):
key ``j`` is visible from query ``i`` iff ``|i - j| <= local_attention // 2``. Layer
``l`` is global iff ``l % global_attn_every_n_layers == 0``.

Why an exact KV cache is impossible here
----------------------------------------
An autoregressive decoder caches keys and values because the hidden state of position
``i`` depends only on tokens ``<= i``: once generated they never change, so K and V of old
positions stay valid forever. A masked diffusion model is *bidirectional*: at every layer
``l >= 1`` the hidden state of every position depends on every token, including the
``[MASK]`` tokens that are replaced at each decoding step. Unmask one token and, in
principle, K and V of all positions in all layers but the first change. (Layer 0 is the
exception: its K and V depend only on the token at that position.)

What Fast-dLLM does instead (approximate caches)
------------------------------------------------
Decoding goes block by block. At the start of a block we run one full forward
(:meth:`ModernBert.build_cache`) and keep every layer's K and V. While the block is being
decoded we recompute only a window (:meth:`ModernBert.forward_window`) and reuse the stored
K and V for the other positions, although they were computed when the block was still
masked:

* **prefix cache**: window = ``[block_start, L)``; the prompt and the finished blocks
  come from the cache;
* **dual cache**: window = ``[block_start, block_end)``; the masked suffix comes from the
  cache too (it is mostly ``[MASK]`` tokens, whose representations change little).

The error stays small because the cached positions change little within one block; the
cache is refreshed at every block. With the cache rebuilt at every step the result is
exactly the uncached one.

Not implemented (not needed for inference): dropout (0 in every ModernBERT config), HF's
unpadding / flash-attention paths, sparse prediction, rope types other than "default".
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ModernBertConfig
from transformers.activations import ACT2FN
from transformers.modeling_outputs import MaskedLMOutput

# -- reading the config across transformers versions -----------------------------------


def layer_is_global(config) -> list[bool]:
    """Per layer: True for global attention, False for sliding-window attention.

    Taught in ``04_block_generation_and_kv_cache``. transformers >= 5 stores
    ``layer_types`` ("full_attention" / "sliding_attention"); older configs store
    ``global_attn_every_n_layers`` n: layer l is global iff ``l % n == 0``.
    """
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return [kind == "full_attention" for kind in layer_types]
    every = getattr(config, "global_attn_every_n_layers", 3)
    return [i % every == 0 for i in range(config.num_hidden_layers)]


def training_flops(config, tokens: int, scored: int, seq_len: int) -> float:
    """FLOPs of one training step (forward and backward) of a ModernBERT masked LM.

    Taught in ``12_scaling_up`` (and used by ``benchmarks/full_preset_throughput.py`` for
    its MFU). A matrix product with a ``(n_in, n_out)`` weight costs ``2 n_in n_out`` FLOPs
    per row forward and twice that backward (the gradients of the input and of the
    weight): 6 FLOPs per weight per row. So, with ``d = hidden_size``,
    ``I = intermediate_size``, ``V = vocab_size``:

    - every one of the ``tokens`` (the batch's real tokens) passes the body: per layer
      ``Wqkv`` (d x 3d), ``Wo`` (d x d), the gated feed-forward's ``Wi`` (d x 2I: the
      value and the gate) and ``Wo`` (I x d), then the head's dense layer (d x d);
    - the decoder (d x V, tied to the embeddings) runs only on the ``scored`` positions:
      the training core computes logits only where the loss reads them;
    - attention: the score ``q . k`` and the weighted sum of values cost ``2d`` each per
      (query, key) pair forward, ``12 d`` with backward; a query sees ``seq_len`` keys in
      a global layer and ``min(seq_len, local_attention)`` in a sliding-window one (what
      an ideal kernel computes; a dense kernel with a mask computes the full square).

    Embedding lookups, norms, activations and biases are left out (a fraction of a
    percent). ``6 N + 12 n_layers d seq_len`` per token, the textbook count, is this with
    every position scored and every layer global.
    """
    d, inner, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    layers = layer_is_global(config)
    body = len(layers) * (4 * d * d + 3 * d * inner) + d * d
    spans = sum(seq_len if is_global else min(seq_len, config.local_attention)
                for is_global in layers)
    return float(6 * body * tokens + 6 * d * vocab * scored + 12 * d * spans * tokens)


def rope_thetas(config) -> tuple[float, float]:
    """The RoPE bases ``(global_theta, local_theta)``.

    Taught in ``04_block_generation_and_kv_cache``. transformers >= 5 stores them in
    ``rope_parameters[layer_type]["rope_theta"]``, older configs as ``global_rope_theta``
    and ``local_rope_theta`` (``None`` meant: same as global).
    """
    params = getattr(config, "rope_parameters", None)
    if params and "full_attention" in params:
        for kind, p in params.items():
            if p is not None and p.get("rope_type", "default") != "default":
                raise ValueError(f"rope_type {p['rope_type']!r} ({kind}) is not supported "
                                 "by the lesson model; use backend='transformers'.")
        global_theta = params["full_attention"]["rope_theta"]
        local = params.get("sliding_attention") or {}
        return float(global_theta), float(local.get("rope_theta", global_theta))
    global_theta = getattr(config, "global_rope_theta", 160_000.0)
    local_theta = getattr(config, "local_rope_theta", None)
    return float(global_theta), float(global_theta if local_theta is None else local_theta)


# -- rotary position embedding and the attention mask ----------------------------------


def rope_cos_sin(positions: torch.Tensor, theta: float, head_dim: int, dtype: torch.dtype):
    """cos and sin tables for rotary embeddings at ``positions`` (W,), each (W, head_dim);
    for per-row positions (B, W) they are (B, 1, W, head_dim) (one row per sequence,
    broadcast over the heads).

    Taught in ``04_block_generation_and_kv_cache``.
    angle[p, k] = p * theta^(-2k / d) for k < d/2, repeated twice along the last axis.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    angles = positions.float()[..., None] * inv_freq.to(positions.device)  # (..., W, d/2)
    angles = torch.cat((angles, angles), dim=-1)  # (..., W, d)
    if angles.dim() == 3:
        angles = angles[:, None]  # (B, 1, W, d)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of features by position-dependent angles; x (B, heads, W, d).

    Taught in ``04_block_generation_and_kv_cache``.
    rope(x) = x * cos + rotate_half(x) * sin, rotate_half([x1, x2]) = [-x2, x1],
    so that <rope(q)_i, rope(k)_j> depends on i - j only. Computed in fp32, like HF.
    """
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def attention_bias(start: int, num_queries: int, num_keys: int,
                   key_mask: torch.Tensor | None, half_window: int | None,
                   dtype: torch.dtype, device) -> torch.Tensor | None:
    """Additive attention mask M (B or 1, 1, W, K), or None when nothing is hidden.

    Taught in ``04_block_generation_and_kv_cache``. Queries sit at positions
    i = start .. start+W-1 (W = num_queries), keys at j = 0 .. K-1 (K = num_keys).
    M[b, 0, i, j] = 0 if key j is visible from query i, else -inf, where visible means
    key_mask[b, j] == 1 (not padding) and, for local layers, |i - j| <= half_window.
    Attention then is softmax(Q K^T / sqrt(d) + M) V.
    """
    visible = None  # bool, broadcastable to (B, 1, W, K)
    farthest = max(start + num_queries - 1, num_keys - 1 - start)  # max |i - j|
    if half_window is not None and farthest > half_window:
        i = torch.arange(start, start + num_queries, device=device)
        j = torch.arange(num_keys, device=device)
        visible = ((i[:, None] - j[None, :]).abs() <= half_window)[None, None]  # (1,1,W,K)
    if key_mask is not None and not bool(key_mask.all()):
        not_pad = key_mask.bool()[:, None, None, :]  # (B, 1, 1, K)
        visible = not_pad if visible is None else visible & not_pad
    if visible is None:
        return None
    zeros = torch.zeros(visible.shape, dtype=dtype, device=device)
    return zeros.masked_fill(~visible, float("-inf"))


@dataclass
class RowSpans:
    """Attention computed row by row, each row over its own real tokens only.

    Taught in ``04_block_generation_and_kv_cache``. A padded row's attention, computed in
    the padded batch with -inf on the padding keys, differs from the same row computed
    alone in the last bits (the reductions over keys are grouped differently when the key
    count changes), and the difference grows through the layers to ~1e-5 in the logits.
    Batched decoding must give each prompt the tokens it gets alone, so it asks for this
    path: ``runs = [(b_lo, b_hi, q_lo, q_hi, k_lo, k_hi, bias)]``: rows ``b_lo:b_hi``
    share their real queries ``q_lo:q_hi`` and keys ``k_lo:k_hi`` (equal padding) and the
    sliding-window bias they would have alone; each run is one attention call (the batch
    dimension does not change a row's result). Padding queries get zeros.
    """

    runs: list


def row_spans(start: int, num_queries: int, key_mask: torch.Tensor,
              half_window: int | None, dtype, device) -> RowSpans | None:
    """The :class:`RowSpans` of a padded batch, or None when a row's real tokens are not
    one contiguous run (then the masked batched attention is used)."""
    rows = []
    for b in range(key_mask.shape[0]):
        real = key_mask[b].nonzero()[:, 0]
        if len(real) == 0:
            return None
        k_lo, k_hi = int(real[0]), int(real[-1]) + 1
        if k_hi - k_lo != len(real):
            return None
        q_lo = min(max(k_lo - start, 0), num_queries)
        q_hi = max(min(k_hi - start, num_queries), q_lo)
        if rows and rows[-1][1] == b and rows[-1][2:6] == (q_lo, q_hi, k_lo, k_hi):
            rows[-1] = (rows[-1][0], b + 1, *rows[-1][2:])     # same padding: one run
            continue
        bias = attention_bias(start + q_lo - k_lo, q_hi - q_lo, k_hi - k_lo, None,
                              half_window, dtype, device)
        rows.append((b, b + 1, q_lo, q_hi, k_lo, k_hi, bias))
    return RowSpans(rows)


# -- the building blocks (names match HF's, so checkpoints load unchanged) -----------


def _layer_norm(config) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)


class Embeddings(nn.Module):
    """Token embeddings followed by LayerNorm: h = LN(E[x0]), (B, L, H)."""

    def __init__(self, config):
        super().__init__()
        pad = config.pad_token_id
        pad = pad if pad is not None and 0 <= pad < config.vocab_size else None
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                           padding_idx=pad)
        self.norm = _layer_norm(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.tok_embeddings(input_ids))  # (B, L, H)


class Attention(nn.Module):
    """Multi-head self-attention with a fused QKV projection and RoPE."""

    def __init__(self, config):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(f"hidden_size {config.hidden_size} must be a multiple of "
                             f"num_attention_heads {config.num_attention_heads}.")
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        hidden = config.hidden_size
        self.Wqkv = nn.Linear(hidden, 3 * hidden, bias=config.attention_bias)
        self.Wo = nn.Linear(hidden, hidden, bias=config.attention_bias)

    def forward(self, x, cos, sin, mask, kv=None, start=0):
        """x (B, W, H) -> (out (B, W, H), K, V), K and V (B, heads, L, d) after RoPE.

        Without ``kv`` the keys are the W positions themselves. With ``kv = (K, V)``
        (a layer of a :class:`KVCache`), the fresh rows are written into K, V at
        ``start:start+W`` and the W queries attend to all L cached positions.
        """
        B, W, _ = x.shape
        qkv = self.Wqkv(x).view(B, W, 3, self.num_heads, self.head_dim)  # fused [q|k|v]
        q, k, v = qkv.transpose(1, 3).unbind(dim=2)  # each (B, heads, W, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:
            K, V = kv  # (B, heads, L, d)
            K[:, :, start:start + W] = k
            V[:, :, start:start + W] = v
            k, v = K, V
        scale = self.head_dim ** -0.5
        if isinstance(mask, RowSpans):  # row by row, over each row's own tokens
            out = torch.zeros_like(q)
            for b0, b1, q_lo, q_hi, k_lo, k_hi, bias in mask.runs:
                if q_hi > q_lo:
                    out[b0:b1, :, q_lo:q_hi] = F.scaled_dot_product_attention(
                        q[b0:b1, :, q_lo:q_hi], k[b0:b1, :, k_lo:k_hi],
                        v[b0:b1, :, k_lo:k_hi], attn_mask=bias, scale=scale)
        else:  # softmax(q k^T / sqrt(d) + mask) v
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                 scale=scale)  # (B, h, W, d)
        return self.Wo(out.transpose(1, 2).reshape(B, W, -1)), k, v


class MLP(nn.Module):
    """Gated linear unit: [u, g] = Wi(x); out = Wo(act(u) * g)."""

    def __init__(self, config):
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size,
                            bias=config.mlp_bias)
        self.act = ACT2FN[config.hidden_activation]
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size,
                            bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, g = self.Wi(x).chunk(2, dim=-1)  # (B, L, I) each
        return self.Wo(self.act(u) * g)  # (B, L, H)


class EncoderLayer(nn.Module):
    """Pre-norm block: h += Attn(LN(h)); h += MLP(LN(h)). Layer 0 skips the first LN."""

    def __init__(self, config, index: int, is_global: bool):
        super().__init__()
        self.is_global = is_global
        self.attn_norm = nn.Identity() if index == 0 else _layer_norm(config)
        self.attn = Attention(config)
        self.mlp_norm = _layer_norm(config)
        self.mlp = MLP(config)

    def forward(self, h, cos, sin, mask, kv=None, start=0):
        a, k, v = self.attn(self.attn_norm(h), cos, sin, mask, kv, start)
        h = h + a
        h = h + self.mlp(self.mlp_norm(h))
        return h, k, v  # (B, W, H), K and V (B, heads, L, d)


class PredictionHead(nn.Module):
    """head(h) = LN(act(dense(h))), before the tied decoder."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size,
                               bias=config.classifier_bias)
        self.act = ACT2FN[config.classifier_activation]
        self.norm = _layer_norm(config)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(h)))


@dataclass
class KVCache:
    """Per-layer keys and values (after RoPE) of one full forward.

    Taught in ``04_block_generation_and_kv_cache``. ``keys[l]`` and ``values[l]`` are
    (B, heads, L, head_dim); ``attention_mask`` (B, L) marks real tokens (None: all);
    ``position_ids`` (B, L) the positions it was built with (None: 0 .. L-1), ``per_row``
    whether it was built with ``per_row=True`` (window passes inherit both).
    :meth:`ModernBert.forward_window` overwrites the window's rows in place.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    per_row: bool = False

    @property
    def length(self) -> int:
        """L, the number of cached positions."""
        return self.keys[0].shape[2]

    def clone(self) -> KVCache:
        """A copy that later in-place window updates leave untouched."""
        mask = None if self.attention_mask is None else self.attention_mask.clone()
        pos = None if self.position_ids is None else self.position_ids.clone()
        return KVCache([k.clone() for k in self.keys], [v.clone() for v in self.values],
                       mask, pos, self.per_row)

    def select(self, rows) -> KVCache:
        """A copy holding only the batch rows ``rows`` (a list of indices)."""
        idx = torch.as_tensor(rows, device=self.keys[0].device)

        def pick(t):
            return None if t is None else t[idx]

        return KVCache([k[idx] for k in self.keys], [v[idx] for v in self.values],
                       pick(self.attention_mask), pick(self.position_ids), self.per_row)


# -- the model -------------------------------------------------------------------------


class ModernBert(nn.Module):
    """ModernBertForMaskedLM, compact and fp32-exact, with an approximate KV cache.

    Taught in ``04_block_generation_and_kv_cache``. Load with :meth:`from_pretrained`
    (a checkpoint folder or hub id) or :meth:`from_hf` (a transformers model).
    """

    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.max_position_embeddings = config.max_position_embeddings
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.global_theta, self.local_theta = rope_thetas(config)
        self.half_window = config.local_attention // 2  # |i - j| <= half_window is seen
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, i, is_global)
                                    for i, is_global in enumerate(layer_is_global(config)))
        self.final_norm = _layer_norm(config)
        self.head = PredictionHead(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size,
                                 bias=config.decoder_bias)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the decoder matrix with the token embeddings (logits = head(h) E^T + b)."""
        if getattr(self.config, "tie_word_embeddings", True):
            self.decoder.weight = self.embeddings.tok_embeddings.weight

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding table E (V, H), as in transformers."""
        return self.embeddings.tok_embeddings

    @property
    def device(self) -> torch.device:
        return self.decoder.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.weight.dtype

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings E[x0] (B, L, H), before the embedding LayerNorm.

        Taught in ``07_soft_tokens``: soft tokens are ``probs (B, L, V) @ E`` and go to
        ``forward(inputs_embeds=...)``, exactly like ``embed(ids)`` would.
        """
        return self.embeddings.tok_embeddings(input_ids)  # (B, L, H)

    def _run(self, h, start, key_mask, cache=None, collect=False, positions=None,
             per_row=False, head_at=None):
        """Layers + head for hidden states h (B, W, H) at sequence indices
        start .. start+W-1; ``positions`` (B, W) their RoPE positions (default: the
        indices). ``per_row``: attention row by row over each row's real tokens
        (:class:`RowSpans`), when ``key_mask`` pads some row.

        ``head_at=(lo, hi)``: the head and vocabulary projection only at window
        positions ``lo:hi`` (logits (B, hi - lo, V)); the other positions' logits are
        never read by a decoder, and the projection dominates a small model's cost.

        Returns logits (B, W, V) and, with ``collect``, every layer's K and V.
        """
        W = h.shape[1]
        num_keys = cache.length if cache is not None else W
        if positions is None:
            positions = torch.arange(start, start + W, device=h.device)  # (W,)
        padded = key_mask is not None and not bool(key_mask.all())
        rope, masks = {}, {}
        for is_global in {layer.is_global for layer in self.layers}:
            theta = self.global_theta if is_global else self.local_theta
            rope[is_global] = rope_cos_sin(positions, theta, self.head_dim, h.dtype)
            window = None if is_global else self.half_window
            spans = (row_spans(start, W, key_mask, window, h.dtype, h.device)
                     if per_row and padded else None)
            masks[is_global] = spans or attention_bias(start, W, num_keys, key_mask,
                                                       window, h.dtype, h.device)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.keys[i], cache.values[i])
            cos, sin = rope[layer.is_global]
            h, k, v = layer(h, cos, sin, masks[layer.is_global], kv, start)
            if collect:
                keys.append(k.contiguous())
                values.append(v.contiguous())
        if head_at is not None:
            h = h[:, head_at[0]:head_at[1]]                    # (B, hi - lo, H)
        logits = self.decoder(self.head(self.final_norm(h)))  # (B, W, V)
        return logits, keys, values

    def _check_mask(self, attention_mask, batch: int, length: int, position_ids=None):
        if attention_mask is not None and tuple(attention_mask.shape) != (batch, length):
            raise ValueError(f"attention_mask must have shape (B, L) = {(batch, length)}, "
                             f"got {tuple(attention_mask.shape)}.")
        if position_ids is not None and tuple(position_ids.shape) != (batch, length):
            raise ValueError(f"position_ids must have shape (B, L) = {(batch, length)}, "
                             f"got {tuple(position_ids.shape)}.")

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None,
                position_ids=None, per_row=False, head_at=None):
        """Logits (B, L, V) for ids (B, L) or embeddings (B, L, H); mask (B, L), 1 = real.

        Taught in ``04_block_generation_and_kv_cache``. Returns an object with
        ``.logits``, like transformers. ``position_ids`` (B, L): RoPE positions (for
        left padding, as in transformers). ``per_row=True``: a padded row gets bit for bit
        the logits it gets alone (:class:`RowSpans`; batched decoding uses it).
        ``head_at=(lo, hi)``: logits (B, hi - lo, V) of positions ``lo:hi`` only.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids (B, L) or inputs_embeds "
                             "(B, L, H).")
        if input_ids is not None:
            if input_ids.dim() != 2:
                raise ValueError("input_ids must be (B, L); add a batch axis with "
                                 "ids[None] for one sequence.")
            h = self.embeddings(input_ids)  # (B, L, H)
        else:
            if inputs_embeds.dim() != 3:
                raise ValueError("inputs_embeds must be (B, L, H).")
            h = self.embeddings.norm(inputs_embeds)  # (B, L, H)
        B, L, _ = h.shape
        self._check_mask(attention_mask, B, L, position_ids)
        logits, _, _ = self._run(h, 0, attention_mask, positions=position_ids,
                                 per_row=per_row, head_at=head_at)
        return MaskedLMOutput(logits=logits)

    @torch.no_grad()
    def build_cache(self, input_ids, attention_mask=None, position_ids=None,
                    per_row=False, head_at=None) -> tuple[torch.Tensor, KVCache]:
        """Full forward that also keeps every layer's K and V: (logits (B, L, V), cache).

        Taught in ``04_block_generation_and_kv_cache``. Run it at the start of a block
        (or at every step for the exact, uncached result). ``position_ids`` and
        ``per_row`` and ``head_at`` as in :meth:`forward`; the cache keeps the first
        two for the window passes.
        """
        if input_ids.dim() != 2:
            raise ValueError("input_ids must be (B, L); use ids[None] for one sequence.")
        B, L = input_ids.shape
        self._check_mask(attention_mask, B, L, position_ids)
        logits, keys, values = self._run(self.embeddings(input_ids), 0, attention_mask,
                                         collect=True, positions=position_ids,
                                         per_row=per_row, head_at=head_at)
        return logits, KVCache(keys, values, attention_mask, position_ids, per_row)

    @torch.no_grad()
    def forward_window(self, window_ids, start: int, cache: KVCache,
                       head_at=None) -> torch.Tensor:
        """Recompute only positions ``start .. start+W-1``: logits (B, W, V).

        Taught in ``04_block_generation_and_kv_cache``. Queries are the W window
        positions; keys and values are the cache's, with the window's rows replaced by
        fresh ones (in place). Prefix cache: window = [block_start, L); dual cache:
        window = [block_start, block_end). If the cache was built on the current
        sequence the logits equal ``forward(...).logits[:, start:start+W]``.
        ``head_at=(lo, hi)``: logits of window positions ``lo:hi`` only.
        """
        if window_ids.dim() != 2:
            raise ValueError("window_ids must be (B, W); use ids[None] for one sequence.")
        B, W = window_ids.shape
        if B != cache.keys[0].shape[0]:
            raise ValueError(f"window batch {B} != cache batch {cache.keys[0].shape[0]}.")
        if start < 0 or W == 0 or start + W > cache.length:
            raise ValueError(f"window [{start}, {start + W}) must be a non-empty part of "
                             f"the cached sequence [0, {cache.length}).")
        positions = (None if cache.position_ids is None
                     else cache.position_ids[:, start:start + W])
        logits, _, _ = self._run(self.embeddings(window_ids), start, cache.attention_mask,
                                 cache=cache, positions=positions, per_row=cache.per_row,
                                 head_at=head_at)
        return logits  # (B, W, V)

    # -- loading ----------------------------------------------------------------------

    @classmethod
    def _from_state_dict(cls, config, state_dict, device=None, dtype=None) -> ModernBert:
        """Build on the meta device (no random init), then adopt the given tensors."""
        state = {k.removeprefix("model."): v for k, v in state_dict.items()
                 if not k.endswith("inv_freq")}
        with torch.device("meta"):
            model = cls(config)
        embedding = "embeddings.tok_embeddings.weight"
        if getattr(config, "tie_word_embeddings", True):  # one matrix, stored once
            shared = state.get(embedding, state.get("decoder.weight"))
            state[embedding] = state["decoder.weight"] = shared
        expected = set(model.state_dict())
        missing = sorted(k for k in expected if state.get(k) is None)
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"Not a ModernBertForMaskedLM checkpoint: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}. "
                             "Load it with transformers.")
        if dtype is None:  # like transformers' dtype="auto": keep the checkpoint's dtype
            dtype = state[embedding].dtype
        model.load_state_dict(state, assign=True)
        model.tie_weights()  # assign=True replaced the shared parameter
        return model.to(device=device, dtype=dtype).eval()

    @classmethod
    def from_hf(cls, hf_model) -> ModernBert:
        """Copy the weights of a transformers ``ModernBertForMaskedLM`` (its device, dtype).

        Taught in ``04_block_generation_and_kv_cache``.
        """
        if type(hf_model).__name__ != "ModernBertForMaskedLM":
            raise ValueError(f"from_hf needs a ModernBertForMaskedLM, got "
                             f"{type(hf_model).__name__}.")
        weight = hf_model.get_input_embeddings().weight
        state = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
        config = ModernBertConfig.from_dict(hf_model.config.to_dict())
        return cls._from_state_dict(config, state, weight.device, weight.dtype)

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None) -> ModernBert:
        """Load config.json + model.safetensors of any ModernBertForMaskedLM checkpoint.

        Taught in ``04_block_generation_and_kv_cache``. ``path`` is a folder or a hub id
        (e.g. ``answerdotai/ModernBERT-base``, downloaded with huggingface_hub when
        online). ``dtype=None`` keeps the checkpoint's dtype, like transformers.
        """
        folder = _resolve_folder(path)
        if isinstance(dtype, str):
            names = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                     "float16": torch.float16, "float64": torch.float64}
            if dtype not in names:
                raise ValueError(f"dtype {dtype!r} is not one of {sorted(names)}.")
            dtype = names[dtype]
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{folder} has no config.json: not a transformers checkpoint.")
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type != "modernbert":
            raise ValueError(f"{folder} holds a {model_type!r} model; the lesson backend "
                             "only knows ModernBERT. Use backend='transformers'.")
        config = ModernBertConfig.from_pretrained(folder)
        return cls._from_state_dict(config, _read_weights(folder), device, dtype)


def _resolve_folder(path) -> Path:
    """A local checkpoint folder, or a hub id fetched into the local HF cache."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    text = str(path)
    looks_local = folder.exists() or text.startswith(("/", ".", "~")) or text.count("/") > 1
    if looks_local:
        raise ValueError(f"{path} is not a checkpoint folder (expected config.json and "
                         "model.safetensors inside).")
    try:
        from huggingface_hub import snapshot_download
        patterns = ["config.json", "*.safetensors", "model.safetensors.index.json"]
        return Path(snapshot_download(text, allow_patterns=patterns))
    except Exception as err:  # offline, unknown id, gated repo ...
        raise ValueError(f"Could not find {path!r} locally or download it from the hub "
                         f"({type(err).__name__}). Offline? Use a local folder or one "
                         "of the shipped models.") from err


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors (or its shards, or pytorch_model.bin)."""
    from safetensors.torch import load_file

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(folder / shard).items()}
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu",
                          weights_only=True)
    raise ValueError(f"{folder} has no model.safetensors (nor shards, "
                     "nor pytorch_model.bin).")


# -- speed check -----------------------------------------------------------------------


def compare_speed(path, seq_len: int = 256, repeats: int = 20) -> tuple[float, float]:
    """Median seconds of one forward (batch 1, fp32): (ours, transformers'), same weights.

    Taught in ``04_block_generation_and_kv_cache``. The two models run alternately so
    that a busy machine slows both alike.
    """
    from transformers import AutoModelForMaskedLM

    ours = ModernBert.from_pretrained(path, dtype=torch.float32)
    theirs = AutoModelForMaskedLM.from_pretrained(path, dtype=torch.float32).eval()
    x0 = torch.randint(0, ours.vocab_size, (1, seq_len),
                       generator=torch.Generator().manual_seed(0))
    times = {"ours": [], "theirs": []}
    with torch.inference_mode():
        for i in range(repeats + 3):  # 3 warm-up rounds
            for name, model in (("ours", ours), ("theirs", theirs)):
                begin = time.perf_counter()
                model(input_ids=x0)
                if i >= 3:
                    times[name].append(time.perf_counter() - begin)
    return statistics.median(times["ours"]), statistics.median(times["theirs"])
