"""The Transformer, all of it in this file: parameters, packed-row masks, forward pass and loss, in plain JAX.

A decoder-only prefix LM (the paper's LaMDA-PT shape) or an encoder-decoder, chosen by
``ModelConfig.layout``. Batches are the packed features of ``flanpipe.schema``:

* Segment-aware attention: a token attends only within its own segment (``*_segment_ids``),
  so packed examples never see each other; segment 0 is padding.
* Positions come from ``*_positions``, which restart at 0 in every segment, and enter
  through rotary embeddings, so an example's outputs do not depend on where it was packed.
* Prefix LM: positions with ``decoder_causal_attention`` = 1 (an example's input part, as
  the compiler marks it) attend to each other in both directions; everything else is causal.
* The loss is the mean cross-entropy over positions where ``decoder_loss_weights`` is 1.

Blocks are pre-RMSNorm with a gated-GELU feed-forward (``architecture: flan``) or SwiGLU
(``architecture: llama``: Hugging Face Llama's layout, with optional grouped-query attention,
see trainer/hf_llama.py); layer parameters are stacked on a leading axis and run with
``lax.scan``, so compile time does not grow with depth. Activations carry sharding
constraints (trainer/sharding.py) that apply under a mesh and are no-ops without one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from trainer.config import ModelConfig
from trainer.sharding import BATCH, constrain

Params = dict[str, Any]
Batch = Mapping[str, jax.Array]

# Masked attention logits get this instead of -inf, so a fully masked (padding) query row
# yields a uniform softmax rather than NaN; its output is never used.
_MASKED = -1e9


# --------------------------------------------------------------------------- parameters
def init_params(config: ModelConfig, key: jax.Array) -> Params:
    """Random float32 parameters: normal with std 1/sqrt(fan_in), norms at 1, embeddings at std 1."""
    keys = iter(jax.random.split(key, 4))
    d = config.d_model
    params: Params = {
        "embed": jax.random.normal(next(keys), (config.vocab_size, d), jnp.float32),
        "decoder": _init_stack(config, next(keys), cross_attention=config.layout == "encoder_decoder"),
        "decoder_norm": jnp.ones((d,), jnp.float32),
    }
    if config.layout == "encoder_decoder":
        params["encoder"] = _init_stack(config, next(keys), cross_attention=False)
        params["encoder_norm"] = jnp.ones((d,), jnp.float32)
    if not config.tie_embeddings:
        params["unembed"] = _dense(next(keys), (d, config.vocab_size), d)
    return params


def _dense(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    return jax.random.normal(key, shape, jnp.float32) / math.sqrt(fan_in)


def _init_attention(config: ModelConfig, key: jax.Array) -> Params:
    n, d, h, k = config.num_layers, config.d_model, config.num_heads, config.head_dim
    kq, kk, kv, ko = jax.random.split(key, 4)
    g = config.kv_heads
    return {
        "q": _dense(kq, (n, d, h, k), d),
        "k": _dense(kk, (n, d, g, k), d),
        "v": _dense(kv, (n, d, g, k), d),
        "o": _dense(ko, (n, h, k, d), h * k),
    }


def _init_stack(config: ModelConfig, key: jax.Array, *, cross_attention: bool) -> Params:
    """One stack of ``num_layers`` blocks, every leaf with a leading layer axis."""
    n, d, f = config.num_layers, config.d_model, config.d_ff
    k_attn, k_cross, k_gate, k_up, k_out = jax.random.split(key, 5)
    stack: Params = {
        "attn_norm": jnp.ones((n, d), jnp.float32),
        "attn": _init_attention(config, k_attn),
        "mlp_norm": jnp.ones((n, d), jnp.float32),
        "mlp": {
            "gate": _dense(k_gate, (n, d, f), d),
            "up": _dense(k_up, (n, d, f), d),
            "down": _dense(k_out, (n, f, d), f),
        },
    }
    if cross_attention:
        stack["cross_norm"] = jnp.ones((n, d), jnp.float32)
        stack["cross"] = _init_attention(config, k_cross)
    return stack


def param_shapes(config: ModelConfig) -> Params:
    """The parameter tree as ShapeDtypeStructs (no memory is allocated)."""
    return jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))


def count_params(config: ModelConfig) -> int:
    """Number of parameters, computed from shapes only."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(param_shapes(config)))


# --------------------------------------------------------------------------- masks
def self_attention_mask(segment_ids: jax.Array, *, causal: bool, prefix: jax.Array | None = None) -> jax.Array:
    """[batch, query, key] boolean mask: same non-padding segment, and causal unless both are prefix.

    Args:
      segment_ids: [batch, length] int, 0 = padding, 1.. = the packed examples.
      causal: whether a query may only see keys at or before it.
      prefix: [batch, length] bool, positions that see each other bidirectionally (prefix LM).
    """
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, :, None] != 0)
    if not causal:
        return constrain(same, BATCH, None, None)
    length = segment_ids.shape[1]
    allowed = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
    if prefix is not None:
        allowed = allowed | (prefix[:, :, None] & prefix[:, None, :])
    return constrain(same & allowed, BATCH, None, None)


def cross_attention_mask(decoder_segment_ids: jax.Array, encoder_segment_ids: jax.Array) -> jax.Array:
    """[batch, decoder, encoder] mask: a decoder token sees the encoder tokens of its own example."""
    mask = (decoder_segment_ids[:, :, None] == encoder_segment_ids[:, None, :]) & (decoder_segment_ids[:, :, None] != 0)
    return constrain(mask, BATCH, None, None)


# --------------------------------------------------------------------------- layers
def rms_norm(x: jax.Array, scale: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Root-mean-square normalisation, computed in float32."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return (x32 * scale.astype(jnp.float32)).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, max_wavelength: float) -> jax.Array:
    """Rotary position embedding of x [batch, length, heads, head_dim] at integer positions [batch, length].

    The rotate-half convention (pairs are (i, i + head_dim/2), not interleaved), as in Hugging
    Face Llama, whose q/k projection weights are laid out for it.
    """
    half = x.shape[-1] // 2
    frequencies = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, :, None, None] * frequencies  # [b, l, 1, half]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def attention(
    p: Params,
    x: jax.Array,
    *,
    context: jax.Array,
    mask: jax.Array,
    positions: jax.Array | None,
    context_positions: jax.Array | None,
    config: ModelConfig,
) -> jax.Array:
    """Multi-head attention from x [b, q, d] over context [b, t, d]; rotary only when positions are given.

    With grouped-query attention (num_kv_heads < num_heads) query head i uses key/value head
    i // (num_heads / num_kv_heads), as Hugging Face's repeat_kv does.
    """
    # b batch, q query position, t key position, h head, k kv head, g query heads per kv head,
    # e head_dim, d model width.
    q = constrain(jnp.einsum("bqd,dhe->bqhe", x, p["q"]), BATCH, None, "tensor", None)
    k = constrain(jnp.einsum("btd,dhe->bthe", context, p["k"]), BATCH, None, "tensor", None)
    v = constrain(jnp.einsum("btd,dhe->bthe", context, p["v"]), BATCH, None, "tensor", None)
    if positions is not None and context_positions is not None:
        q = rope(q, positions, config.rope_max_wavelength)
        k = rope(k, context_positions, config.rope_max_wavelength)
    b, length, heads, e = q.shape
    q = q.reshape(b, length, config.kv_heads, heads // config.kv_heads, e)
    logits = jnp.einsum("bqkge,btke->bkgqt", q, k).astype(jnp.float32) / math.sqrt(config.head_dim)
    logits = jnp.where(mask[:, None, None, :, :], logits, _MASKED)
    weights = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
    out = jnp.einsum("bkgqt,btke->bqkge", weights, v).reshape(b, length, heads, e)
    return constrain(jnp.einsum("bqhe,hed->bqd", out, p["o"]), BATCH, None, None)


def mlp(p: Params, x: jax.Array, config: ModelConfig) -> jax.Array:
    """Gated feed-forward: down(act(gate(x)) * up(x)), act = GELU (flan) or SiLU (llama's SwiGLU)."""
    act = jax.nn.silu if config.architecture == "llama" else jax.nn.gelu
    hidden = act(jnp.einsum("bld,df->blf", x, p["gate"])) * jnp.einsum("bld,df->blf", x, p["up"])
    hidden = constrain(hidden, BATCH, None, "tensor")
    return constrain(jnp.einsum("blf,fd->bld", hidden, p["down"]), BATCH, None, None)


def block(
    p: Params,
    x: jax.Array,
    *,
    mask: jax.Array,
    positions: jax.Array,
    config: ModelConfig,
    encoded: jax.Array | None = None,
    cross_mask: jax.Array | None = None,
) -> jax.Array:
    """One pre-norm residual block: self-attention, [cross-attention,] feed-forward."""
    eps = config.norm_eps
    h = rms_norm(x, p["attn_norm"], eps)
    x = x + attention(p["attn"], h, context=h, mask=mask, positions=positions, context_positions=positions,
                      config=config)
    if encoded is not None and cross_mask is not None:
        h = rms_norm(x, p["cross_norm"], eps)
        # No rotary embedding across sequences: encoder and decoder positions are unrelated.
        x = x + attention(p["cross"], h, context=encoded, mask=cross_mask, positions=None, context_positions=None,
                          config=config)
    h = rms_norm(x, p["mlp_norm"], eps)
    return x + mlp(p["mlp"], h, config)


def run_stack(
    stack: Params,
    x: jax.Array,
    *,
    mask: jax.Array,
    positions: jax.Array,
    config: ModelConfig,
    encoded: jax.Array | None = None,
    cross_mask: jax.Array | None = None,
) -> jax.Array:
    """Apply every block of a stack in turn (lax.scan over the stacked layer axis)."""

    def body(carry: jax.Array, layer: Params) -> tuple[jax.Array, None]:
        return block(layer, carry, mask=mask, positions=positions, config=config, encoded=encoded,
                     cross_mask=cross_mask), None

    if config.remat:
        body = jax.checkpoint(body)
    x, _ = jax.lax.scan(body, x, stack)
    return x


# --------------------------------------------------------------------------- the model
def embed(params: Params, tokens: jax.Array, soft_prompt: jax.Array | None, dtype: jnp.dtype) -> jax.Array:
    """Token embeddings; a soft prompt [P, d] replaces the first P positions of every row."""
    # The lookup reads whole rows of the table: gather it (as FSDP does for every weight) so the
    # result is computed where its batch rows live, rather than resharded after the fact.
    table = constrain(params["embed"], None, None)
    x = constrain(table[tokens].astype(dtype), BATCH, None, None)
    if soft_prompt is not None:
        prompt = jnp.broadcast_to(soft_prompt.astype(dtype), (x.shape[0], *soft_prompt.shape))
        x = x.at[:, : soft_prompt.shape[0]].set(prompt)
    return x


def logits(params: Params, batch: Batch, config: ModelConfig, soft_prompt: jax.Array | None = None) -> jax.Array:
    """Next-token logits [batch, length, vocab] (float32) for the decoder row of a packed batch.

    Args:
      params: from ``init_params`` (float32; cast to ``config.dtype`` here).
      batch: the packed features of ``config.layout`` (flanpipe.schema), int arrays [batch, length].
      config: the model shape.
      soft_prompt: optional [P, d_model] vectors; rows must reserve their first P input positions
        (encoder input for encoder_decoder) for it, as ``trainer.data.featurize`` does.
    """
    dtype = jnp.dtype(config.dtype)
    p = jax.tree.map(lambda a: a.astype(dtype), params)
    decoder_segments = batch["decoder_segment_ids"]
    if config.layout == "decoder_only":
        x = embed(p, batch["decoder_input_tokens"], soft_prompt, dtype)
        prefix = batch["decoder_causal_attention"] > 0 if config.prefix_lm else None
        mask = self_attention_mask(decoder_segments, causal=True, prefix=prefix)
        x = run_stack(p["decoder"], x, mask=mask, positions=batch["decoder_positions"], config=config)
    else:
        encoder_segments = batch["encoder_segment_ids"]
        e = embed(p, batch["encoder_input_tokens"], soft_prompt, dtype)
        e = run_stack(p["encoder"], e, mask=self_attention_mask(encoder_segments, causal=False),
                      positions=batch["encoder_positions"], config=config)
        e = rms_norm(e, p["encoder_norm"], config.norm_eps)
        x = embed(p, batch["decoder_input_tokens"], None, dtype)
        x = run_stack(p["decoder"], x, mask=self_attention_mask(decoder_segments, causal=True),
                      positions=batch["decoder_positions"], config=config, encoded=e,
                      cross_mask=cross_attention_mask(decoder_segments, encoder_segments))
    x = rms_norm(x, p["decoder_norm"], config.norm_eps)
    if config.tie_embeddings:
        out = jnp.einsum("bld,vd->blv", x, p["embed"])
        if config.architecture == "flan":
            # The embedding has std 1, so scale by 1/sqrt(d) to keep initial logits at unit scale.
            out = out / math.sqrt(config.d_model)
    else:
        out = jnp.einsum("bld,dv->blv", x, p["unembed"])
    return constrain(out.astype(jnp.float32), BATCH, None, "tensor")


def token_log_probs(
    params: Params, batch: Batch, config: ModelConfig, soft_prompt: jax.Array | None = None
) -> jax.Array:
    """log p(decoder_target_tokens[i] | row) at every position, [batch, length] float32."""
    log_probs = jax.nn.log_softmax(logits(params, batch, config, soft_prompt), axis=-1)
    targets = batch["decoder_target_tokens"]
    return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def loss_fn(
    params: Params, batch: Batch, config: ModelConfig, soft_prompt: jax.Array | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy over target tokens (decoder_loss_weights == 1) and the number of them."""
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    nll = -token_log_probs(params, batch, config, soft_prompt) * weights
    target_tokens = jnp.sum(weights)
    loss = jnp.sum(nll) / jnp.maximum(target_tokens, 1.0)
    return loss, {"target_tokens": target_tokens}
