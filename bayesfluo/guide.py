"""The amortized guide: an encoder from a patch of spectra to the posterior of its latents.

One forward pass of :class:`Encoder` maps a patch of ``P`` pixels (their normalised
spectra and ancillary inputs, :func:`pixel_features`) to a Gaussian approximation of the
posterior of :func:`bayesfluo.model.scene_model` in NumPyro's unconstrained space:

shared latents of the patch (``S`` = the free atmospheric and sensor latents)
    ``q(z_s) = N(m_s, L_s L_s^T)``, amortized by pooling the pixels' trunk embeddings (a
    masked mean and attention-weighted means: the pooling sees every valid pixel of the
    patch, as the posterior does) plus a linear regression on the patch's mean input.
local latents of each pixel (``D`` = the reflectance coefficients and SIF amplitudes)
    ``q(u | z_s) = N(m + A (z_s - m_s), L L^T)``: a full covariance per pixel (reflectance
    and SIF amplitude are correlated in the posterior; a diagonal family could not say so)
    and a linear coupling ``A`` to the patch's shared latents, which is the first-order
    form of the true posterior's structure ``p(z_s | X) prod_i p(u_i | x_i, z_s)``: the
    shared atmosphere correlates the errors of a patch's pixels, and the guide keeps that.

The marginal of a pixel's local latents is ``N(m, L L^T + A L_s L_s^T A^T)``, so the
summaries of :func:`summaries` (mean, sd, quantiles of F760, SIF peak, reflectance at
760 nm and the atmospheric terms) are closed-form or one-dimensional quadrature: no
sampling on the retrieval path.

The trunk is a residual MLP (pre-norm blocks with skip connections); the SIF amplitude's
unconstrained coordinate is that of :class:`bayesfluo.model.SoftplusHalfNormal`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import eqx_module

from bayesfluo import __version__
from bayesfluo.model import (
    SIF_KNEE,
    ModelConfig,
    _reflectance_prior,
    reflectance_weights,
    shared_parameters,
    sif_scale,
)
from bayesfluo.physics.forward import ForwardModel
from bayesfluo.physics.surface import SifParams, sif_spectrum

__all__ = ["Encoder", "GuideOutput", "AmortizedGuide", "pixel_features", "guide_program",
           "ReferenceExpansion", "reference_expansion", "reference_log_radiance",
           "expand_reference",
           "summaries", "sample_draws", "ANCILLARY", "load_guide", "local_names"]

#: Ancillary inputs of every pixel, after the spectrum (see :func:`pixel_features`).
ANCILLARY = ("cos_sza", "vza_deg", "cos_raa", "surface_altitude_km", "height_km",
             "log_noise_sd", "read_noise_fraction", "ndvi")
_HEADS = 4  # attention heads of the patch pooling
_LOG_FLOOR = 1e-3  # radiance floor (mW m-2 sr-1 nm-1) before the logarithm


def local_names(fm: ForwardModel, has_red: bool) -> list[str]:
    """Names of the local latent coordinates, in the guide's order."""
    return ([f"reflectance_z[{k}]" for k in range(fm.n_basis)] + ["sif_far_red_raw"]
            + (["sif_red_raw"] if has_red else []))


def _tril(raw: jax.Array, n: int) -> jax.Array:
    """A lower-triangular factor with positive diagonal from ``n (n + 1) / 2`` numbers
    (row-major, as :func:`numpy.tril_indices`). The diagonal is ``exp`` (clipped):
    posterior scales here span 1e-3 to 3.

    Built from static slices and padding (no scatter: it fuses into its producer)."""
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
        Inputs per pixel (bands plus :data:`ANCILLARY`).
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
        # see bayesfluo.train.init_linear_skips); the MLP learns what is not linear
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


@dataclass
class AmortizedGuide:
    """A trained encoder with everything needed to apply it: the instrument, the model
    configuration, the input normalisation and the training ranges of the ancillary
    inputs (outside them the input is flagged as out of distribution).

    Attributes
    ----------
    encoder : Encoder
    instrument : str
    config : ModelConfig
    has_red : bool
    patch_size : int
        Side of the square patches (pixels) that share an atmosphere.
    feature_mean, feature_sd : numpy.ndarray
        Per-feature normalisation (bands, then :data:`ANCILLARY`).
    ranges : dict
        Training range of each ancillary input, name -> (low, high).
    hyper : dict
        Encoder hyper-parameters (``width``, ``depth``).
    info : dict
        Training record (steps, wall time, seed, final loss...), for the model card.
    """

    encoder: Encoder
    instrument: str
    config: ModelConfig
    has_red: bool
    patch_size: int
    feature_mean: np.ndarray
    feature_sd: np.ndarray
    ranges: dict
    hyper: dict
    info: dict

    @property
    def n_pixels(self) -> int:
        return self.patch_size**2

    def save(self, path: str | Path) -> Path:
        """Write ``weights.eqx`` and ``model.json`` into the directory ``path`` (each
        written to a temporary name and renamed)."""
        from bayesfluo.io.atomic import atomic_path
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = dict(format="bayesfluo-guide-1", bayesfluo_version=__version__,
                    instrument=self.instrument, has_red=self.has_red,
                    patch_size=self.patch_size, hyper=self.hyper,
                    n_features=int(self.feature_mean.size),
                    config=_config_to_dict(self.config),
                    feature_mean=[float(v) for v in self.feature_mean],
                    feature_sd=[float(v) for v in self.feature_sd],
                    ranges={k: [float(a), float(b)] for k, (a, b) in self.ranges.items()},
                    info=self.info)
        with atomic_path(path / "weights.eqx") as tmp:
            eqx.tree_serialise_leaves(tmp, self.encoder)
        with atomic_path(path / "model.json") as tmp:
            Path(tmp).write_text(json.dumps(meta, indent=1))
        return path


def _config_to_dict(cfg: ModelConfig) -> dict:
    d = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    d["free"] = list(cfg.free)
    return d


def config_from_dict(d: dict) -> ModelConfig:
    """A :class:`ModelConfig` from a dict (e.g. a TOML table); ``free`` as a list."""
    d = dict(d)
    if "free" in d:
        d["free"] = tuple(d["free"])
    if "fixed" in d:
        d["fixed"] = ModelConfig().fixed | dict(d["fixed"])
    return ModelConfig(**d)


def new_encoder(n_features: int, fm: ForwardModel, cfg: ModelConfig, has_red: bool,
                width: int, depth: int, key) -> Encoder:
    """An untrained :class:`Encoder` sized for the instrument and configuration."""
    return Encoder(n_features, fm.n_basis + 1 + int(has_red), len(cfg.free), width, depth,
                   key=key)


def load_guide(path: str | Path) -> AmortizedGuide:
    """Read a guide saved by :meth:`AmortizedGuide.save` (a model directory)."""
    from bayesfluo.physics.forward import build_forward_model
    path = Path(path)
    meta_file = path / "model.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a bayesfluo model directory (no model.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_file} is not valid JSON: {e}") from None
    if meta.get("format") != "bayesfluo-guide-1":
        raise ValueError(f"{meta_file}: unknown model format {meta.get('format')!r}")
    cfg = config_from_dict(meta["config"])
    fm = build_forward_model(meta["instrument"])
    skeleton = new_encoder(meta["n_features"], fm, cfg, meta["has_red"],
                           meta["hyper"]["width"], meta["hyper"]["depth"],
                           jax.random.PRNGKey(0))
    try:
        enc = eqx.tree_deserialise_leaves(path / "weights.eqx", skeleton)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"{path / 'weights.eqx'} could not be read as this model's "
                         f"weights: {e}") from None
    return AmortizedGuide(enc, meta["instrument"], cfg, bool(meta["has_red"]),
                          int(meta["patch_size"]), np.asarray(meta["feature_mean"], np.float32),
                          np.asarray(meta["feature_sd"], np.float32),
                          {k: tuple(v) for k, v in meta["ranges"].items()}, meta["hyper"],
                          meta.get("info", {}))


# --- inputs ---------------------------------------------------------------------------

def ancillary_inputs(sza, vza, raa, surface_altitude, sensor_altitude, noise_a, noise_b,
                     ndvi, reference_radiance: float) -> jax.Array:
    """The :data:`ANCILLARY` inputs (..., 8) from geometry (degrees, m), the noise
    coefficients (variance ``a L + b``) and NDVI, broadcast together."""
    var_ref = noise_a * reference_radiance + noise_b
    cols = [jnp.cos(jnp.deg2rad(sza)), vza, jnp.cos(jnp.deg2rad(raa)),
            surface_altitude / 1000.0, (sensor_altitude - surface_altitude) / 1000.0,
            0.5 * jnp.log(var_ref), noise_b / var_ref, ndvi]
    cols = jnp.broadcast_arrays(*[jnp.asarray(c, jnp.float32) for c in cols])
    return jnp.stack(cols, -1)


def pixel_features(radiance, ancillary, mean, sd, reference) -> jax.Array:
    """Normalised encoder input: log radiance per band relative to the ``reference``
    (log radiance of a grey surface under the prior atmosphere at the pixel's geometry,
    :func:`reference_log_radiance`), then the ancillary inputs, standardised by the
    training statistics ``mean``/``sd``."""
    x = jnp.concatenate([jnp.log(jnp.maximum(radiance, _LOG_FLOOR)) - reference, ancillary],
                        -1)
    return (x - mean) / sd


class ReferenceExpansion(NamedTuple):
    """Second-order expansion of the log band radiance of a grey surface (reflectance
    0.3, no SIF) under the prior atmosphere, in ``g`` = (sun air mass, view air mass,
    surface altitude km, sensor height above ground km), about ``g0``."""

    g0: jax.Array
    value: jax.Array
    jac: jax.Array
    hess: jax.Array


def _geometry_coordinates(sza, vza, surface_altitude_m, sensor_altitude_m):
    return jnp.stack([1.0 / jnp.cos(jnp.deg2rad(sza)), 1.0 / jnp.cos(jnp.deg2rad(vza)),
                      surface_altitude_m / 1000.0,
                      (sensor_altitude_m - surface_altitude_m) / 1000.0], -1)


def _reference_of(fm: ForwardModel, cfg: ModelConfig):
    """``g -> log radiance (bands,)`` of a grey surface under the prior atmosphere."""
    from bayesfluo.physics.forward import (
        Geometry,
        band_operator,
        radiance_from_operator,
        standard_pressure_hpa,
    )

    def f(g):
        surf = g[2] * 1000.0
        sza, vza = jnp.rad2deg(jnp.arccos(jnp.minimum(1.0 / g[:2], 1.0)))
        geom = Geometry(sza, vza, jnp.float32(0.0), surf, surf + g[3] * 1000.0,
                        jnp.float32(1.0))
        atm, sens, _ = shared_parameters(cfg, {"surface_pressure0": standard_pressure_hpa(
            surf)}, {n: jnp.float32(0.0) for n in cfg.free})
        op = band_operator(fm, atm, geom, sens)
        return jnp.log(radiance_from_operator(fm, op, jnp.full(fm.n_basis, 0.3, jnp.float32),
                                              SifParams(0.0, 0.0)))
    return f


def reference_log_radiance(fm: ForwardModel, cfg: ModelConfig, sza, vza, surface_altitude_m,
                           sensor_altitude_m) -> jax.Array:
    """Log band radiance (..., bands) of a grey surface (reflectance 0.3, no SIF) under the
    prior atmosphere at each geometry (degrees, m), exactly (one band operator each).

    The encoder reads each spectrum relative to this reference: the O2 band's depth, set
    mostly by geometry, is divided out, and what remains (surface, SIF fill-in, the
    departure of pressure and aerosol from the prior) is what the encoder has to read.
    """
    g = _geometry_coordinates(*(jnp.asarray(v, jnp.float32) for v in
                                (sza, vza, surface_altitude_m, sensor_altitude_m)))
    f = _reference_of(fm, cfg)
    flat = g.reshape(-1, 4)
    return jax.lax.map(f, flat).reshape(g.shape[:-1] + (fm.n_bands,))


def reference_expansion(fm: ForwardModel, cfg: ModelConfig, sza, vza, surface_altitude_m,
                        sensor_altitude_m) -> ReferenceExpansion:
    """:func:`reference_log_radiance` expanded to second order about one geometry, for
    the many pixels of a chunk of a scene whose geometries are close to it."""
    g0 = _geometry_coordinates(*(jnp.asarray(v, jnp.float32) for v in
                                 (sza, vza, surface_altitude_m, sensor_altitude_m)))
    # zenith angle as a function of airmass has an infinite slope at 0 deg: a nadir (or
    # overhead-sun) scene is expanded about airmass 1.001 (2.6 deg), 1e-3 away
    g0 = g0.at[:2].set(jnp.maximum(g0[:2], 1.001))
    f = _reference_of(fm, cfg)
    return ReferenceExpansion(g0, f(g0), jax.jacfwd(f)(g0), jax.jacfwd(jax.jacfwd(f))(g0))


def expand_reference(ref: ReferenceExpansion, sza, vza, surface_altitude_m,
                     sensor_altitude_m) -> jax.Array:
    """Evaluate a :class:`ReferenceExpansion` at geometries (...) -> (..., bands)."""
    d = _geometry_coordinates(sza, vza, surface_altitude_m, sensor_altitude_m) - ref.g0
    return (ref.value + jnp.einsum("bj,...j->...b", ref.jac, d)
            + 0.5 * jnp.einsum("bjk,...j,...k->...b", ref.hess, d, d))


# --- the guide as a NumPyro program -----------------------------------------------------

def _knee_softplus(v):
    # v is floored at -8 (an amplitude of 2e-35): below, float32 softplus underflows to
    # zero, outside the half-normal's support
    return SIF_KNEE * jax.nn.softplus(jnp.maximum(v, -8.0) / SIF_KNEE)


def guide_program(encoder: Encoder, fm: ForwardModel, cfg: ModelConfig, data: dict,
                  has_red: bool = False, subsample_size: int | None = None):
    """NumPyro guide of :func:`bayesfluo.model.scene_model` (same arguments, plus the
    encoder and ``data["features"]`` (N, P, F)). The encoder's weights are NumPyro
    parameters (``encoder$params``, through :func:`numpyro.contrib.module.eqx_module`)."""
    net = eqx_module("encoder", encoder)
    n_patch, n_pix = data["ndvi"].shape
    k = fm.n_basis
    with numpyro.plate("patch", n_patch, subsample_size=subsample_size, dim=-2) as idx:
        feats, mask = data["features"][idx], data["mask"][idx]
        q = jax.vmap(net)(feats, mask)
        s = len(cfg.free)
        if s:
            zs = numpyro.sample("shared_u", dist.MultivariateNormal(
                q.shared_loc[:, None], scale_tril=q.shared_tril[:, None]),
                infer={"is_auxiliary": True})                       # (b, 1, S)
            for i, n in enumerate(cfg.free):
                numpyro.sample(f"{n}_z", dist.Delta(zs[..., i]))
            shift = jnp.einsum("bpds,bs->bpd", q.coupling, zs[:, 0] - q.shared_loc)
        else:
            shift = 0.0
        with numpyro.plate("pixel", n_pix, dim=-1):
            u = numpyro.sample("local_u", dist.MultivariateNormal(
                q.local_loc + shift, scale_tril=q.local_tril), infer={"is_auxiliary": True})
            numpyro.sample("reflectance_z", dist.Delta(u[..., :k], event_dim=1))
            for j, name in enumerate(["sif_far_red_raw"] + (["sif_red_raw"] if has_red
                                                            else [])):
                v = u[..., k + j]
                # density of the constrained value: q(v) / |d raw / d v|
                log_jac = jax.nn.log_sigmoid(v / SIF_KNEE)
                numpyro.sample(name, dist.Delta(_knee_softplus(v), log_density=-log_jac))


# --- closed-form summaries ----------------------------------------------------------------

# one-dimensional Gaussian expectations: the trapezoidal rule on 141 nodes over +-7 sd.
# Gauss-Hermite would be exact for polynomials, but the SIF transform has a knee (width
# 0.1 in the unconstrained coordinate) that a few dozen Hermite nodes step over when the
# posterior is wide; the trapezoid's error there is below 1e-4 of the sd.
_GH_X = np.linspace(-7.0, 7.0, 141)
_GH_W = np.exp(-0.5 * _GH_X**2)
_GH_W = _GH_W / _GH_W.sum()
_Z05 = 1.6448536269514722


def _quantity(mean, sd, f):
    """Mean, sd and 5/50/95 % quantiles of ``f(v)``, ``v ~ N(mean, sd)``, ``f``
    increasing: quantiles exactly, moments by quadrature."""
    v = mean[..., None] + sd[..., None] * jnp.asarray(_GH_X, jnp.float32)
    fv = f(v)
    w = jnp.asarray(_GH_W, jnp.float32)
    m = fv @ w
    var = jnp.maximum(((fv - m[..., None]) ** 2) @ w, 0.0)
    q = f(mean[..., None] + sd[..., None] * jnp.array([-_Z05, 0.0, _Z05], jnp.float32))
    return dict(mean=m, sd=jnp.sqrt(var), q05=q[..., 0], q50=q[..., 1], q95=q[..., 2])


def marginal_local(q: GuideOutput) -> tuple[jax.Array, jax.Array]:
    """Mean (..., P, D) and covariance (..., P, D, D) of each pixel's local latents,
    integrated over the patch's shared latents."""
    cov_l = q.local_tril @ jnp.swapaxes(q.local_tril, -1, -2)
    cov_s = q.shared_tril @ jnp.swapaxes(q.shared_tril, -1, -2)
    a = q.coupling
    cov = cov_l + a @ cov_s[..., None, :, :] @ jnp.swapaxes(a, -1, -2)
    return q.local_loc, cov


def summaries(q: GuideOutput, fm: ForwardModel, cfg: ModelConfig, ndvi, surface_pressure0,
              has_red: bool = False) -> dict:
    """Posterior summaries of every pixel from the guide's output (arrays with the
    output's leading dims, then (P,) for pixel quantities).

    Returns ``{quantity: {mean, sd, q05, q50, q95}}`` for ``f760`` (mW m-2 sr-1 nm-1),
    ``f687`` (windows with the O2-B band), ``sif_peak``, ``reflectance760`` (1) and each
    free shared latent (its physical units, per patch).
    """
    k = fm.n_basis
    mean = q.local_loc
    # the marginal covariance L L^T + B B^T, B = A L_s, only where needed (elementwise
    # products and sums over the small axes: tiny batched matrix products are slow on CPU)
    lb = jnp.concatenate([q.local_tril, jnp.sum(q.coupling[..., :, :, None]
                                                * q.shared_tril[..., None, None, :, :],
                                                -2)], -1)                    # (..., P, D, D + S)
    sd = jnp.sqrt(jnp.sum(lb * lb, -1))
    scale = sif_scale(ndvi, cfg)                                      # F760 per unit raw
    shape_far = SifParams(0.0, 1.0)
    peak_ratio = sif_spectrum(shape_far.centre_far_red, shape_far) / sif_spectrum(760.0,
                                                                                  shape_far)
    out = {}
    f760 = _quantity(mean[..., k], sd[..., k], lambda v: scale[..., None] * _knee_softplus(v))
    out["f760"] = f760
    out["sif_peak"] = {s: v * peak_ratio for s, v in f760.items()}
    if has_red:
        # F687 = red part + far-red tail; quadrature over the two marginals would need their
        # correlation: use 2-D Gauss-Hermite on the pair
        cov2 = jnp.sum(lb[..., k:k + 2, None, :] * lb[..., None, k:k + 2, :], -1)
        out["f687"] = _f687(mean[..., k:k + 2], cov2, scale, cfg)
    # reflectance at 760 nm: linearised (its posterior sd is ~1e-3, far inside the
    # sigmoid's linear range)
    mu, chol = _reflectance_prior(fm, cfg)
    w = reflectance_weights(fm, 760.0)
    zr = mean[..., :k]
    c = jax.nn.sigmoid(mu + zr @ chol.T)
    r760 = c @ w
    grad = (w * c * (1 - c)) @ chol                                   # d R760 / d z
    g_lb = jnp.sum(grad[..., :, None] * lb[..., :k, :], -2)            # grad^T [L B]
    var = jnp.sum(g_lb * g_lb, -1)
    sd_r = jnp.sqrt(jnp.maximum(var, 0.0))
    out["reflectance760"] = dict(mean=r760, sd=sd_r, q05=r760 - _Z05 * sd_r, q50=r760,
                                 q95=r760 + _Z05 * sd_r)
    # shared latents: exact (affine or log-normal in z)
    s_sd = jnp.sqrt(jnp.diagonal(q.shared_tril @ jnp.swapaxes(q.shared_tril, -1, -2),
                                 axis1=-2, axis2=-1))
    for i, n in enumerate(cfg.free):
        def phys(v, i=i, n=n):
            zs = {m: v for m in cfg.free}
            p0 = jnp.asarray(surface_pressure0)[..., None] if v.ndim > jnp.ndim(
                surface_pressure0) else surface_pressure0
            return shared_parameters(cfg, {"surface_pressure0": p0}, zs)[2][n]
        out[n] = _quantity(q.shared_loc[..., i], s_sd[..., i], phys)
    return out


def _f687(m2, c2, scale, cfg):
    """Mean, sd and quantiles of F687 from the mean (..., 2) and covariance (..., 2, 2) of
    the two SIF amplitudes' unconstrained coordinates."""
    shape = SifParams(1.0, 0.0)
    r_red = sif_spectrum(687.0, shape) / sif_spectrum(760.0, SifParams(0.0, 1.0))
    r_far = sif_spectrum(687.0, SifParams(0.0, 1.0)) / sif_spectrum(760.0, SifParams(0.0, 1.0))
    l2 = jnp.linalg.cholesky(c2 + 1e-9 * jnp.eye(2))
    x, w = np.polynomial.hermite_e.hermegauss(24)  # 2-D: 576 nodes
    x, w = jnp.asarray(x, jnp.float32), jnp.asarray(w / w.sum(), jnp.float32)
    gx, gy = jnp.meshgrid(x, x, indexing="ij")
    nodes = jnp.stack([gx.ravel(), gy.ravel()], -1)                   # (n2, 2)
    ww = (w[:, None] * w[None, :]).ravel()
    v = m2[..., None, :] + jnp.einsum("...ij,nj->...ni", l2, nodes)
    f = scale[..., None] * (r_far * _knee_softplus(v[..., 0])
                            + cfg.sif_red_ratio * r_red * _knee_softplus(v[..., 1]))
    m = f @ ww
    sd = jnp.sqrt(jnp.maximum(((f - m[..., None]) ** 2) @ ww, 0.0))
    # quantiles: weighted empirical quantiles of the quadrature nodes
    order = jnp.argsort(f, axis=-1)
    fs = jnp.take_along_axis(f, order, -1)
    cw = jnp.cumsum(ww[order], -1)
    qs = [jnp.take_along_axis(fs, jnp.argmax(cw >= p, -1)[..., None], -1)[..., 0]
          for p in (0.05, 0.5, 0.95)]
    return dict(mean=m, sd=sd, q05=qs[0], q50=qs[1], q95=qs[2])


def sample_draws(q: GuideOutput, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """``n`` joint draws of the guide: shared (n, ..., S) and local (n, ..., P, D)
    unconstrained latents."""
    k1, k2 = jax.random.split(key)
    e_s = jax.random.normal(k1, (n,) + q.shared_loc.shape)
    zs = q.shared_loc + jnp.einsum("...ij,n...j->n...i", q.shared_tril, e_s)
    e_l = jax.random.normal(k2, (n,) + q.local_loc.shape)
    d = zs - q.shared_loc
    loc = q.local_loc + jnp.einsum("...pds,n...s->n...pd", q.coupling, d)
    u = loc + jnp.einsum("...pij,n...pj->n...pi", q.local_tril, e_l)
    return zs, u
