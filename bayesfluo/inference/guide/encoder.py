"""The encoder of the amortized guide: a patch of pixel features -> a Gaussian over the
patch's latents (:class:`GuideOutput`).

The trunk is a residual MLP (pre-norm blocks with skip connections) applied to every
pixel; the patch's shared latents are read from pooled embeddings (a masked mean and
attention-weighted means), each pixel's local latents from its own embedding and the
patch's context. See :mod:`bayesfluo.inference.guide` for the form of the posterior.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from bayesfluo.model import SifModel

__all__ = ["Encoder", "GuideOutput", "new_encoder"]

_HEADS = 4  # attention heads of the patch pooling


def _tril(raw: jax.Array, n: int) -> jax.Array:
    """A lower-triangular factor with positive diagonal from ``n (n + 1) / 2`` numbers
    (row-major, as :func:`numpy.tril_indices`). The diagonal is ``exp`` (clipped):
    posterior scales here span 1e-3 to 3.

    Built from static slices and padding (no scatter: it fuses into its producer)."""
    if n == 0:  # no shared latents (a tower's model)
        return jnp.zeros(raw.shape[:-1] + (0, 0), raw.dtype)
    rows = []
    for i in range(n):
        t = i * (i + 1) // 2
        r = raw[..., t:t + i + 1]
        diag = jnp.exp(jnp.clip(r[..., i:], -12.0, 3.0))
        r = jnp.concatenate([r[..., :i], diag], -1) if i else diag
        rows.append(jnp.pad(r, [(0, 0)] * (raw.ndim - 1) + [(0, n - i - 1)]))
    return jnp.stack(rows, -2)


def _layer_norm(norm: eqx.nn.LayerNorm, x: jax.Array) -> jax.Array:
    """:class:`equinox.nn.LayerNorm` over the last axis of ``x`` (any leading dims)."""
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.maximum(jnp.var(x, -1, keepdims=True), 0.0)
    return (x - mean) * jax.lax.rsqrt(var + norm.eps) * norm.weight + norm.bias


def _dense(lin: eqx.nn.Linear, x: jax.Array) -> jax.Array:
    """:class:`equinox.nn.Linear` applied to the rows of ``x`` (..., in) -> (..., out)."""
    return x @ lin.weight.T + lin.bias


class _Block(eqx.Module):
    norm: eqx.nn.LayerNorm
    lin1: eqx.nn.Linear
    lin2: eqx.nn.Linear

    def __init__(self, width: int, key):
        k1, k2 = jax.random.split(key)
        self.norm = eqx.nn.LayerNorm(width)
        self.lin1 = eqx.nn.Linear(width, width, key=k1)
        self.lin2 = eqx.nn.Linear(width, width, key=k2)

    def __call__(self, h):
        return h + self.lin2(jax.nn.gelu(self.lin1(self.norm(h))))


class GuideOutput(eqx.Module):
    """Variational parameters of one patch (see the module docstring); leading dims are
    whatever the encoder was vmapped over."""

    shared_loc: jax.Array      # (S,)
    shared_tril: jax.Array     # (S, S)
    local_loc: jax.Array       # (P, D)
    local_tril: jax.Array      # (P, D, D)
    coupling: jax.Array        # (P, D, S)


class Encoder(eqx.Module):
    """Residual MLP encoder of one patch: features (P, F) and mask (P,) -> GuideOutput.

    Parameters
    ----------
    n_features : int
        Inputs per pixel (bands plus
        :data:`~bayesfluo.inference.guide.features.ANCILLARY`).
    n_local, n_shared : int
        Local latents per pixel and shared latents per patch.
    width, depth : int
        Width of the trunk and number of residual blocks (two layers each).
    key : jax.Array
        PRNG key of the initial weights.
    """

    inp: eqx.nn.Linear
    blocks: list
    patch_head: eqx.nn.MLP
    pixel_head: eqx.nn.MLP
    local_linear: eqx.nn.Linear
    shared_linear: eqx.nn.Linear
    attention: eqx.nn.Linear
    n_local: int = eqx.field(static=True)
    n_shared: int = eqx.field(static=True)

    def __init__(self, n_features: int, n_local: int, n_shared: int, width: int = 256,
                 depth: int = 2, *, key):
        keys = jax.random.split(key, depth + 6)
        self.inp = eqx.nn.Linear(n_features, width, key=keys[0])
        self.blocks = [_Block(width, k) for k in keys[1:depth + 1]]
        s, d = n_shared, n_local
        self.n_local, self.n_shared = d, s
        n_s = s + s * (s + 1) // 2
        # patch pooling: the masked mean and _HEADS attention-weighted means of the
        # embeddings (attention lets the atmosphere be read where it is clearest, e.g. in
        # pixels without fluorescence)
        self.attention = eqx.nn.Linear(width, _HEADS, key=keys[-5])
        self.patch_head = eqx.nn.MLP(width * (1 + _HEADS), max(n_s, 1), width, 1,
                                     activation=jax.nn.gelu, key=keys[-2])
        n_l = d + d * (d + 1) // 2 + d * s
        self.pixel_head = eqx.nn.MLP(2 * width + s, n_l, width, 1, activation=jax.nn.gelu,
                                     key=keys[-1])
        # linear skips from the inputs to the means (set by regression before training:
        # see bayesfluo.inference.train.init_linear_skips); the MLP learns what is not linear
        self.local_linear = eqx.nn.Linear(n_features, d, key=keys[-3])
        self.shared_linear = eqx.nn.Linear(n_features, max(s, 1), key=keys[-4])
        # start near the prior: small outputs (unit-ish scales, no coupling)
        self.patch_head = eqx.tree_at(lambda m: m.layers[-1].weight, self.patch_head,
                                      self.patch_head.layers[-1].weight * 0.01)
        self.pixel_head = eqx.tree_at(lambda m: m.layers[-1].weight, self.pixel_head,
                                      self.pixel_head.layers[-1].weight * 0.01)

    def trunk(self, x: jax.Array) -> jax.Array:
        """Embedding of one pixel's features (the bare per-pixel cost)."""
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        return h

    def __call__(self, features: jax.Array, mask: jax.Array) -> GuideOutput:
        """The guide's output of one patch: features (P, F), mask (P,)."""
        return jax.tree.map(lambda v: v[0], self.encode(features[None], mask[None]))

    def encode(self, features: jax.Array, mask: jax.Array) -> GuideOutput:
        """The guide's output of a batch of patches: features (N, P, F), mask (N, P).

        Equal (to float32 rounding) to ``jax.vmap(self)(features, mask)``, written as
        matrix products over all ``N P`` pixels at once: the trunk's layers are single
        (N P, width) products; the per-pixel head's first layer is split into the pixel's
        part and the patch's context part (pooled embedding and shared means), the latter
        computed once per patch; the attention scores share a product with the head's
        pixel part; the linear skip to the local means shares one with the input layer.
        """
        n, p, nf = features.shape
        s, d = self.n_shared, self.n_local
        width = self.inp.weight.shape[0]
        x = features.reshape(n * p, nf)
        # the linear skips are fixed by regression before training (not trained further:
        # Adam's noise would erase the small, precise weights the atmosphere needs)
        lin_l = jax.lax.stop_gradient(self.local_linear)
        lin_s = jax.lax.stop_gradient(self.shared_linear)
        y = x @ jnp.concatenate([self.inp.weight, lin_l.weight]).T + jnp.concatenate(
            [self.inp.bias, lin_l.bias])
        h, m_lin = y[:, :width], y[:, width:]
        for b in self.blocks:
            h = h + _dense(b.lin2, jax.nn.gelu(_dense(b.lin1, _layer_norm(b.norm, h))))
        first, last = self.pixel_head.layers
        w_pix, w_pool, w_ms = (first.weight[:, :width], first.weight[:, width:2 * width],
                               first.weight[:, 2 * width:])
        y = h @ jnp.concatenate([w_pix, self.attention.weight]).T       # (N P, W + heads)
        pre = y[:, :width].reshape(n, p, width)
        scores = (y[:, width:] + self.attention.bias).reshape(n, p, _HEADS)
        h = h.reshape(n, p, width)
        w = mask.astype(h.dtype)[..., None]                             # (N, P, 1)
        count = jnp.maximum(jnp.sum(w, 1), 1.0)                         # (N, 1)
        pooled = jnp.einsum("npo,npw->nw", w, h) / count
        scores = jnp.where(w > 0, scores, -1e9)
        att = jax.nn.softmax(scores, axis=1) * w
        att = att / jnp.maximum(att.sum(1, keepdims=True), 1e-9)
        pooled_att = jnp.einsum("nph,npw->nhw", att, h).reshape(n, _HEADS * width)
        out_s = jax.vmap(self.patch_head)(jnp.concatenate([pooled, pooled_att], -1))
        pooled_x = jnp.einsum("npo,npf->nf", w, features) / count
        m_s = out_s[:, :s] + _dense(lin_s, pooled_x)[:, :s]
        tril_s = _tril(out_s[:, s:s + s * (s + 1) // 2], s)
        ctx = pooled @ w_pool.T + m_s @ w_ms.T + first.bias             # (N, W) per patch
        out = _dense(last, jax.nn.gelu(pre + ctx[:, None]))                     # (N, P, n_l)
        m = out[..., :d] + m_lin.reshape(n, p, d)
        tril = _tril(out[..., d:d + d * (d + 1) // 2], d)
        a = out[..., d + d * (d + 1) // 2:].reshape(n, p, d, s)
        return GuideOutput(m_s, tril_s, m, tril, a)


def new_encoder(n_features: int, model: SifModel, width: int, depth: int,
                key: jax.Array) -> Encoder:
    """An untrained :class:`Encoder` sized for the model's latents.

    Parameters
    ----------
    n_features : int
        Inputs per pixel (bands plus :data:`~bayesfluo.inference.guide.features.ANCILLARY`).
    model : SifModel
        The model whose posterior the guide approximates (its local and free shared
        latents set the output sizes).
    width, depth : int
        Trunk width and residual blocks.
    key : jax.Array
        PRNG key of the initial weights.
    """
    return Encoder(n_features, model.n_local, len(model.free), width, depth, key=key)
