"""Training the amortized guide: pre-training on simulations, SVI fine-tuning on scenes.

Two phases, either optional, each a loop of optax updates (warm-up then cosine-decayed
learning rate, gradient clipping by global norm, AdamW) with checkpoints:

``pretrain``
    On simulated patches drawn afresh at every step from the model's own prior predictive
    (:func:`bayesfluo.scene.prior.simulate_batch`: the model's program with the shared
    latents conditioned on a pool of ``n_atmospheres`` draws of atmosphere, sensor and
    geometry whose band operators are computed once). The loss is the amortized forward
    KL, ``-log q(truth | spectra)`` per pixel (neural posterior estimation): it needs the
    truth, which simulations have, and it is mass-covering, so the intervals it learns
    are calibrated rather than too narrow.
``finetune``
    On the user's scenes, self-supervised: stochastic variational inference, the ELBO of
    :meth:`bayesfluo.model.SifModel.batch_program` under
    :func:`bayesfluo.inference.guide.guide_program` (NumPyro's ``Trace_ELBO``; minibatches
    of patches by plate subsampling). This is how the guide adapts to an atmosphere or a
    sensor state outside the pre-training range. The scenes (``TrainConfig.scenes``) are
    read by the caller (``bayesfluo train`` reads them with
    :func:`bayesfluo.io.read_scene`) and given to :func:`train` as datasets.

Checkpoints (``checkpoint.pkl`` in the output directory: weights, optimiser state, phase,
step, loss history) are written atomically every ``checkpoint_every`` steps; a killed run
started again with the same configuration resumes from the last one and ends with the same
weights as an uninterrupted run (each step's random numbers come from ``fold_in(seed,
step)``). A non-finite loss or gradient stops the run with :class:`TrainingDiverged`,
leaving the last good checkpoint in place.

Data parallelism: with ``devices > 1`` each minibatch is split across devices along the
patch dimension (``jax.sharding``), parameters replicated; the result is the same as on
one device up to floating-point summation order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import shutil
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.stats
import numpy as np
import numpyro.distributions as dist
import optax
import xarray as xr
from numpyro.infer import Trace_ELBO
from tqdm.auto import tqdm

from bayesfluo.inference.guide import (
    F760_INFLATION_EDGES,
    AmortizedGuide,
    Encoder,
    GuideInputs,
    ancillary_inputs,
    fit_check,
    fit_chi2,
    geometry_coordinates,
    guide_inputs,
    guide_program,
    inflate_f760,
    load_guide,
    new_encoder,
    patch_relative_chi2,
    pixel_features,
    reference_function,
    summaries,
)
from bayesfluo.inference.guide.tower import tower_inputs
from bayesfluo.inference.tower import (
    TowerPool,
    build_tower_pool,
    simulate_tower_batch,
)
from bayesfluo.inference.world import WorldPool, build_world_pool, world_scene
from bayesfluo.instruments import get_instrument
from bayesfluo.io.atomic import atomic_path
from bayesfluo.model import ModelConfig, Patch, SifModel, inverse_knee_softplus
from bayesfluo.model.scene_expansion import OPERATOR_INPUTS, operator_inputs, operator_of_inputs
from bayesfluo.physics.forward import Geometry, standard_pressure_hpa
from bayesfluo.physics.o2 import SPECTROSCOPY
from bayesfluo.scene.bands import model_on_scene_grid, same_grid, scene_bands
from bayesfluo.scene.grid import PatchGrid, check_scene_for_model
from bayesfluo.scene.prior import Atmospheres
from bayesfluo.scene.prior import simulate_batch as prior_batch
from bayesfluo.scene.prosail_surface import prosail_surface
from bayesfluo.scene.simulate import simulate_scene

__all__ = ["NUISANCE_LATENTS", "TrainConfig", "train", "TrainingDiverged", "default_ranges",
           "build_pool",
           "TrainingPool", "TrainingBatch", "simulate_batch", "feature_statistics",
           "init_linear_skips", "npe_loss", "world_loss", "fit_chi2_quantiles",
           "world_holdout_calibration", "scene_inputs"]


NUISANCE_LATENTS = ("angstrom", "diffuse_path")
"""Fixed latents that :attr:`TrainConfig.nuisance` may draw per training atmosphere."""


class TrainingDiverged(RuntimeError):
    """The loss or its gradient became non-finite; the last good checkpoint is kept."""


def default_ranges(instrument: str) -> dict:
    """Pre-training ranges of the conditions for an instrument: geometry (deg, m),
    signal-to-noise at the reference radiance, read-noise fraction of the variance, NDVI of
    bare and vegetated pixels."""
    inst = get_instrument(instrument)
    sza = (15.0, 60.0)
    if inst.platform == "airborne":
        height = (300.0, 2000.0)
    elif inst.platform == "tower":  # masts of 2-20 m, scans from morning to evening
        height, sza = (2.0, 20.0), (15.0, 75.0)
    else:
        height = (inst.altitude_m, inst.altitude_m)
    return dict(sza_deg=sza, vza_deg=(0.0, inst.fov_deg / 2 + 1.0),
                raa_deg=(0.0, 360.0), surface_altitude_m=(0.0, 1000.0), height_m=height,
                snr=(0.67 * inst.snr, 2.0 * inst.snr), read_noise_fraction=(0.0, 0.2),
                ndvi_bare=(-0.1, 0.25), ndvi_vegetated=(0.25, 0.9))


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run (``bayesfluo train config.toml``; see
    ``bayesfluo/data/models/*/train.toml`` for examples).

    Attributes
    ----------
    instrument : str
    out : str
        Output model directory (weights, model.json, history, checkpoint).
    model : ModelConfig
    patch_size : int
        Side of the square patches sharing an atmosphere (pixels).
    width, depth : int
        Encoder trunk width and residual blocks.
    seed : int
    start_from : str, optional
        A model directory to start from (its encoder, model configuration and input
        normalisation); pre-training then continues from it, or is skipped.
    pretrain_steps, batch_patches, n_atmospheres, learning_rate, warmup_steps : int/float
        Pre-training on simulations: steps, patches per step, atmospheres in the pool,
        peak learning rate, linear warm-up steps.
    ranges : dict
        Conditions of the simulations (:func:`default_ranges`); ``bare_fraction`` of the
        pixels are bare.
    nuisance : dict
        Fixed latents of the model (``angstrom``, ``diffuse_path`` where not free) drawn
        per pre-training atmosphere, uniform in ``[lo, hi]``, instead of held at their
        fixed value (TOML table ``[nuisance]``). The world varies what the model fixes;
        a guide trained over these ranges gives posteriors that marginalise them, so its
        F760 is not pulled by the one value the model assumes. Empty: the model's prior.
    world_steps, world_scenes, world_size, world_prosail_every, world_seed,
    world_batch_patches, world_learning_rate, world_weight, world_holdout : int/float
        The world phase (:mod:`bayesfluo.inference.world`), after pre-training: steps,
        simulated scenes (``world_size`` pixels square, every ``world_prosail_every``-th
        with PROSAIL surfaces, seeds from ``world_seed``), their patches per step (each
        step also takes ``batch_patches`` prior draws, so the guide keeps the prior's
        calibration), peak learning rate, weight of the world loss, and scenes held out
        for the ``poor_fit`` reference (:func:`fit_chi2_quantiles`).
    world_zero_sif : str
        The world phase's target where a pixel's true SIF is zero (bare soil, water,
        roofs): ``"censored"``, "at most the floor" (:data:`bayesfluo.inference.world
        .F760_FLOOR`), or ``"floor"``, the floor itself. A censored target does not
        penalise a wide posterior whose mean lies above the floor, so where prior draws
        (bare pixels with a little SIF) and the world (none) disagree, the guide may
        widen without bound in the SIF coordinate, and a posterior mean far above zero
        follows from the width (a tower guide did: 0.5 mW m-2 sr-1 nm-1 on bare soil);
        the floor target keeps the width to what the two disagree by.
    calibration_scenes : int
        Scenes of the package's own simulator added to the held-out world scenes of
        :func:`world_holdout_calibration` (``world_size`` square, seeds from
        ``CALIBRATION_SEED``, apart from training's and validation's): even ones at the
        simulator's defaults, odd ones on PROSAIL surfaces at nominal conditions.
    scenes : tuple of str
        Scene files (netCDF) for self-supervised fine-tuning (read by the caller and
        given to :func:`train`).
    finetune_steps, finetune_batch_patches, finetune_learning_rate : int/float
    clip_norm, weight_decay : float
    checkpoint_every : int
        Steps between checkpoints.
    devices : int
        Devices for data parallelism (1: the default device).
    """

    instrument: str = "hyplant-fluo-o2a"
    out: str = "model-out"
    model: ModelConfig = field(default_factory=ModelConfig)
    patch_size: int = 8
    width: int = 256
    depth: int = 2
    seed: int = 0
    start_from: str | None = None
    pretrain_steps: int = 4000
    batch_patches: int = 16
    n_atmospheres: int = 2048
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    ranges: dict = field(default_factory=dict)
    nuisance: dict = field(default_factory=dict)
    bare_fraction: float = 0.25
    world_steps: int = 0
    world_scenes: int = 224
    world_size: int = 32
    world_prosail_every: int = 3
    world_seed: int = 1_000_000
    world_batch_patches: int = 16
    world_learning_rate: float = 3e-4
    world_weight: float = 1.0
    world_holdout: int = 32
    world_zero_sif: str = "censored"
    calibration_scenes: int = 0
    scenes: tuple[str, ...] = ()
    finetune_steps: int = 0
    finetune_batch_patches: int = 8
    finetune_learning_rate: float = 3e-4
    clip_norm: float = 1.0
    weight_decay: float = 1e-5
    checkpoint_every: int = 200
    devices: int = 1

    def __post_init__(self):
        get_instrument(self.instrument)
        merged = default_ranges(self.instrument) | {k: tuple(v) for k, v in
                                                    self.ranges.items()}
        unknown = set(self.ranges) - set(default_ranges(self.instrument))
        if unknown:
            raise ValueError(f"unknown range(s) {sorted(unknown)}; known: "
                             f"{sorted(default_ranges(self.instrument))}")
        object.__setattr__(self, "ranges", merged)
        if self.batch_patches % self.devices or self.finetune_batch_patches % self.devices:
            raise ValueError("batch_patches and finetune_batch_patches must be multiples of "
                             "devices")
        nuisance = {k: tuple(float(x) for x in v) for k, v in self.nuisance.items()}
        for k, v in nuisance.items():
            if k not in NUISANCE_LATENTS:
                raise ValueError(f"nuisance {k!r}: only {list(NUISANCE_LATENTS)} can be "
                                 "drawn per atmosphere")
            if k in self.model.free:
                raise ValueError(f"nuisance {k!r} is a free latent of the model; a free "
                                 "latent has its prior, not a nuisance range")
            if len(v) != 2 or not v[0] <= v[1]:
                raise ValueError(f"nuisance {k!r}: give [lo, hi] with lo <= hi, not {v}")
        object.__setattr__(self, "nuisance", nuisance)
        if self.finetune_steps and not self.scenes:
            raise ValueError("finetune_steps > 0 needs scenes to fine-tune on")
        if self.world_zero_sif not in ("censored", "floor"):
            raise ValueError(f"world_zero_sif must be 'censored' or 'floor', not "
                             f"{self.world_zero_sif!r}")
        if get_instrument(self.instrument).platform == "tower":
            if self.finetune_steps:
                raise ValueError("self-supervised fine-tuning is for images; a tower's "
                                 "guide is pre-trained and trained on the world only")
            if self.nuisance:
                raise ValueError("a tower's model has no atmosphere: [nuisance] does not "
                                 "apply (its irradiance pool varies the aerosol)")

    @classmethod
    def from_toml(cls, path: str | Path, **overrides) -> TrainConfig:
        """Read a TOML file: top-level keys are fields, table ``[model]`` the
        :class:`ModelConfig`, table ``[ranges]`` the simulation ranges. Relative paths
        (``out``, ``scenes``, ``start_from``) are relative to the file."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"training configuration not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from None
        raw |= overrides
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; known: "
                             f"{sorted(known)}")
        base = path.parent
        if "model" in raw:
            raw["model"] = ModelConfig.from_dict(raw["model"])
        for k in ("out", "start_from"):
            if raw.get(k) and k not in overrides:
                raw[k] = str(base / raw[k])
        if "scenes" in raw:
            raw["scenes"] = tuple(s if "scenes" in overrides else str(base / s)
                                  for s in raw["scenes"])
        return cls(**raw)

    def fingerprint(self) -> str:
        """Hash of everything that determines the result (not ``out``, ``checkpoint_every``,
        ``devices``): a checkpoint is resumed only by the same configuration."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("out", "checkpoint_every", "devices")}
        d["model"] = self.model.to_dict()
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


# --- simulations --------------------------------------------------------------------------

class TrainingPool(NamedTuple):
    """Conditions of the simulated patches (a pytree, passed to jitted functions as an
    argument): the pool of atmospheres with their band operators, and the guide's
    reference spectrum at each one's geometry."""

    atmospheres: Atmospheres
    reference: jax.Array        # (n, bands): bayesfluo.inference.guide.reference_log_radiance


class TrainingBatch(NamedTuple):
    """A minibatch of simulated patches with their truth in the guide's coordinates.

    Attributes
    ----------
    patches : Patch
        N patches of P pixels (radiance included).
    ancillary : array (N, P, 8) or (N, P, 9)
        :func:`bayesfluo.inference.guide.ancillary_inputs` (a tower's:
        :func:`bayesfluo.inference.guide.tower.tower_ancillary`).
    reference : array (N, 1, B) or (N, P, B)
        The guide's reference log radiance of each patch
        (:func:`bayesfluo.inference.guide.reference_log_radiance`); a tower's, each
        scan's ``log(E/pi)`` (:func:`bayesfluo.inference.guide.tower.tower_reference`).
    z_true : array (N, S)
        The shared latents (standard-normal coordinates, ``model.free`` order).
    u_true : array (N, P, D)
        The local latents in the guide's unconstrained order (``model.local_names()``).
    """

    patches: Patch
    ancillary: jax.Array
    reference: jax.Array
    z_true: jax.Array
    u_true: jax.Array


def _uniform(key, lohi, n):
    lo, hi = lohi
    return jax.random.uniform(key, (n,), jnp.float32, lo, hi)


def build_pool(model: SifModel, tc: TrainConfig, key: jax.Array, n: int,
               progress: bool = True) -> TrainingPool:
    """``n`` draws of geometry (uniform in ``tc.ranges``) and shared latents (the prior),
    with their band operators (:meth:`SifModel.operator`) and the guide's reference
    spectra. The nuisance latents of ``tc.nuisance`` are drawn per atmosphere (uniform)
    and replace the model's fixed values in the operators."""
    r = tc.ranges
    ks = jax.random.split(key, 6)
    # one key per nuisance latent, apart from the six above: an empty table keeps the pool
    nk = jax.random.split(jax.random.fold_in(key, 1), len(NUISANCE_LATENTS))
    nuisance = {name: _uniform(nk[i], tc.nuisance[name], n)
                for i, name in enumerate(NUISANCE_LATENTS) if name in tc.nuisance}
    columns = [OPERATOR_INPUTS.index(name) for name in nuisance]
    surf = _uniform(ks[3], r["surface_altitude_m"], n)
    geom = Geometry(_uniform(ks[0], r["sza_deg"], n), _uniform(ks[1], r["vza_deg"], n),
                    _uniform(ks[2], r["raa_deg"], n), surf,
                    surf + _uniform(ks[4], r["height_m"], n), jnp.ones(n, jnp.float32))
    z = jax.random.normal(ks[5], (n, len(model.free)), jnp.float32)
    p0 = standard_pressure_hpa(surf)

    reference = reference_function(model)

    @jax.jit
    def ops(g, zz, p, nu):
        def one(g1, z1, p1, nu1):
            patch = Patch(radiance=None, mask=None, ndvi=None, geometry=g1, noise_a=None,
                          noise_b=None, surface_pressure0=p1)
            gc = geometry_coordinates(g1.sza_deg, g1.vza_deg, g1.surface_altitude_m,
                                      g1.sensor_altitude_m)
            if not columns:
                return model.operator(patch, z1), reference(gc)
            u = operator_inputs(model, patch, z1).at[jnp.asarray(columns)].set(nu1)
            return operator_of_inputs(model, u), reference(gc)
        return jax.vmap(one)(g, zz, p, nu)

    nu_all = jnp.stack([nuisance[k] for k in nuisance], -1) if nuisance else \
        jnp.zeros((n, 0), jnp.float32)

    chunk = 64
    parts = []
    for i in tqdm(range(0, n, chunk), desc="atmospheres", disable=not progress,
                  unit="chunk"):
        sl = slice(i, min(i + chunk, n))
        g = jax.tree.map(lambda v, sl=sl: jnp.pad(v[sl], (0, chunk - v[sl].shape[0]), "edge"),
                         geom)
        zz = jnp.pad(z[sl], ((0, chunk - z[sl].shape[0]), (0, 0)), mode="edge")
        pp = jnp.pad(p0[sl], (0, chunk - p0[sl].shape[0]), mode="edge")
        nu = jnp.pad(nu_all[sl], ((0, chunk - nu_all[sl].shape[0]), (0, 0)), mode="edge")
        out = ops(g, zz, pp, nu)
        parts.append(jax.tree.map(lambda v, m=sl.stop - sl.start: v[:m], out))
    op, ref = jax.tree.map(lambda *v: jnp.concatenate(v), *parts)
    return TrainingPool(Atmospheres(geom, z, op, p0), ref)


def simulate_batch(model: SifModel, tc: TrainConfig, pool: TrainingPool | TowerPool,
                   key: jax.Array,
                   n_patches: int, reference_radiance: float) -> TrainingBatch:
    """A minibatch of simulated patches from the model's prior predictive
    (:func:`bayesfluo.scene.prior.simulate_batch` under the conditions ``tc.ranges``)
    with the guide's inputs other than the spectra and the truth in the guide's
    unconstrained coordinates. A tower's model draws under the irradiance spectra of a
    :class:`~bayesfluo.inference.tower.TowerPool`
    (:func:`bayesfluo.inference.tower.simulate_tower_batch`)."""
    if model.top_of_canopy:
        return TrainingBatch(*simulate_tower_batch(
            model, pool, key, n_patches, tc.patch_size**2, tc.ranges, tc.bare_fraction,
            reference_radiance))
    patches, truth = prior_batch(model, key, pool.atmospheres, n_patches, tc.patch_size**2,
                                 tc.ranges, tc.bare_fraction, reference_radiance)
    k = model.fm.n_basis
    u_true = jnp.concatenate([truth["reflectance_z"]]
                             + [inverse_knee_softplus(truth[n])[..., None]
                                for n in model.local_names()[k:]], -1)
    geom = patches.geometry
    anc = ancillary_inputs(geom.sza_deg[:, None], geom.vza_deg[:, None], geom.raa_deg[:, None],
                           geom.surface_altitude_m[:, None], geom.sensor_altitude_m[:, None],
                           patches.noise_a[:, None], patches.noise_b[:, None], patches.ndvi,
                           reference_radiance)
    reference = pool.reference[truth["atmosphere"]]
    return TrainingBatch(patches, anc, reference[:, None, :], truth["shared_z"], u_true)


def feature_statistics(batches: list[TrainingBatch]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of each encoder input over simulated batches (sd floored: constant
    inputs, e.g. a satellite's altitude, pass through unscaled)."""
    x = np.concatenate([np.concatenate([np.log(np.maximum(np.asarray(b.patches.radiance),
                                                          1e-3))
                                        - np.asarray(b.reference),
                                        np.asarray(b.ancillary)], -1).reshape(
        -1, b.patches.radiance.shape[-1] + b.ancillary.shape[-1]) for b in batches])
    mean = x.mean(0)
    sd = x.std(0)
    sd = np.where(sd < 1e-6, 1.0, sd)
    return mean.astype(np.float32), sd.astype(np.float32)


def init_linear_skips(encoder: Encoder, batches: list[TrainingBatch], mean: np.ndarray,
                      sd: np.ndarray, ridge: float = 1e-6) -> Encoder:
    """Set the encoder's linear skips (inputs -> means) to the ridge regression of the true
    latents on the normalised inputs over simulated batches, and the diagonal scales of
    the heads to the regression's residual sd: training starts from the best linear
    estimator and learns the rest."""
    xs, us, px, zs = [], [], [], []
    for b in batches:
        f = np.asarray(pixel_features(b.patches.radiance, b.ancillary, mean, sd,
                                      b.reference))
        xs.append(f.reshape(-1, f.shape[-1]))
        us.append(np.asarray(b.u_true).reshape(-1, b.u_true.shape[-1]))
        px.append(f.mean(1))
        zs.append(np.asarray(b.z_true))

    def fit(x, y):
        x1 = np.concatenate([x, np.ones((x.shape[0], 1))], 1).astype(np.float64)
        a = x1.T @ x1 + ridge * x.shape[0] * np.diag(np.r_[np.ones(x.shape[1]), 0.0])
        w = np.linalg.solve(a, x1.T @ y)
        resid = y - x1 @ w
        # in-sample residuals understate fresh data's by about (n - p) / n
        dof = max(x1.shape[0] - x1.shape[1], 1)
        return w[:-1].T, w[-1], resid.std(0) * np.sqrt(x1.shape[0] / dof)

    d, s = encoder.n_local, encoder.n_shared
    w, b, r = fit(np.concatenate(xs), np.concatenate(us))
    enc = eqx.tree_at(lambda e: (e.local_linear.weight, e.local_linear.bias), encoder,
                      (jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)))
    diag_idx = [i * (i + 1) // 2 + i for i in range(d)]  # row-major tril positions
    bias = enc.pixel_head.layers[-1].bias.at[jnp.asarray(d + np.array(diag_idx))].set(
        jnp.asarray(np.log(np.maximum(r, 1e-4)), jnp.float32))
    enc = eqx.tree_at(lambda e: e.pixel_head.layers[-1].bias, enc, bias)
    if s:
        w, b, r = fit(np.concatenate(px), np.concatenate(zs))
        enc = eqx.tree_at(lambda e: (e.shared_linear.weight, e.shared_linear.bias), enc,
                          (jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)))
        diag_idx = [i * (i + 1) // 2 + i for i in range(s)]
        bias = enc.patch_head.layers[-1].bias.at[jnp.asarray(s + np.array(diag_idx))].set(
            jnp.asarray(np.log(np.maximum(r, 1e-4)), jnp.float32))
        enc = eqx.tree_at(lambda e: e.patch_head.layers[-1].bias, enc, bias)
    return enc


def world_loss(encoder: Encoder, feats: jax.Array, mask: jax.Array, u_reflectance: jax.Array,
               u_f760: jax.Array, censored: jax.Array, f760_weight: float = 4.0,
               u_red: jax.Array | None = None, censored_red: jax.Array | None = None
               ) -> jax.Array:
    """Amortized forward KL on simulated scenes of the world
    (:mod:`bayesfluo.inference.world`), per pixel, on the marginals the targets define:
    ``-(log q(u_R) + w log q(u_F)) / n`` with ``q`` the pixel's local marginal
    ``N(m, L L^T + A L_s L_s^T A^T)`` (the patch's shared latents integrated out: the
    world's atmosphere has no true value in the model's coordinates), ``u_R`` the
    reflectance's projection onto the model's family, ``u_F`` the true F760 in the SIF
    coordinate; where the true F760 is zero the target is censored, ``log
    P(u_F' < u_F)``. ``w`` weights the F760 term (one coordinate against the
    reflectance's K). With ``u_red`` (windows with the O2-B band) the red peak's
    coordinate's marginal enters the same way, with the same weight, so that F687's
    intervals are trained on the world too."""
    q = encoder.encode(feats, mask)
    k = u_reflectance.shape[-1]
    lb = jnp.concatenate([q.local_tril, jnp.einsum("npds,nst->npdt", q.coupling,
                                                   q.shared_tril)], -1)
    cov_r = jnp.einsum("npit,npjt->npij", lb[..., :k, :], lb[..., :k, :])
    chol_r = jnp.linalg.cholesky(cov_r + 1e-6 * jnp.eye(k))
    lp_r = dist.MultivariateNormal(q.local_loc[..., :k], scale_tril=chol_r).log_prob(
        u_reflectance)

    def lp(i, target, cens):  # the marginal of local coordinate i, censored below
        m = q.local_loc[..., i]
        sd = jnp.sqrt(jnp.sum(lb[..., i, :] ** 2, -1))
        zz = (target - m) / sd
        return jnp.where(cens, jax.scipy.stats.norm.logcdf(zz),
                         -0.5 * zz**2 - jnp.log(sd) - 0.5 * jnp.log(2 * jnp.pi))

    lp_f = f760_weight * lp(k, u_f760, censored)
    if u_red is not None:  # the red peak's share of the true F687 (two-peak windows)
        lp_f = lp_f + f760_weight * lp(k + 1, u_red, censored_red)
    n = jnp.maximum(mask.sum(), 1.0)
    return -jnp.sum(mask * (lp_r + lp_f)) / n


def npe_loss(encoder: Encoder, feats: jax.Array, mask: jax.Array, z_true: jax.Array,
             u_true: jax.Array, shared_weight: float = 16.0) -> jax.Array:
    """Amortized forward KL per pixel: ``-(w log q(z_s) + sum_i log q(u_i | z_s)) / n``.

    The shared term is weighted by ``w`` so that the patch's atmosphere, whose term would
    otherwise carry 1/64 of the loss (the pixel terms are evaluated at the true shared
    latents and do not train it), gets a larger share of the gradient; the shared and the
    pixel terms have their own output heads."""
    q = jax.vmap(encoder)(feats, mask)
    n = mask.sum()
    if encoder.n_shared:
        lp_s = dist.MultivariateNormal(q.shared_loc, scale_tril=q.shared_tril).log_prob(
            z_true).sum()
        loc = q.local_loc + jnp.einsum("bpds,bs->bpd", q.coupling, z_true - q.shared_loc)
    else:
        lp_s, loc = 0.0, q.local_loc
    lp_l = dist.MultivariateNormal(loc, scale_tril=q.local_tril).log_prob(u_true)
    return -(shared_weight * lp_s + jnp.sum(lp_l * mask)) / n


# --- the loops ------------------------------------------------------------------------------

def _optimizer(peak_lr: float, warmup: int, steps: int, tc: TrainConfig):
    sched = optax.warmup_cosine_decay_schedule(0.0, peak_lr, max(min(warmup, steps - 1), 1),
                                               max(steps, 2), end_value=0.05 * peak_lr)
    return optax.chain(optax.clip_by_global_norm(tc.clip_norm),
                       optax.adamw(sched, weight_decay=tc.weight_decay))


def _sharder(n_devices: int):
    """Constrain arrays to be split along their first axis over the devices."""
    if n_devices <= 1:
        return (lambda x: x), None
    devs = jax.devices()
    if len(devs) < n_devices:
        raise ValueError(f"devices = {n_devices} but JAX sees {len(devs)}: {devs}")
    mesh = jax.sharding.Mesh(np.array(devs[:n_devices]), ("batch",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return (lambda t: jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, spec), t)), rep


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(jax.device_get(state), f)


def _load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            state = pickle.load(f)
    except Exception as e:
        raise ValueError(f"checkpoint {path} is unreadable ({e}); delete it to start "
                         "afresh") from None
    if state.get("fingerprint") != fingerprint:
        raise ValueError(f"checkpoint {path} is from a different configuration; use another "
                         "'out' directory or delete the checkpoint")
    return state


def _loop(phase: str, step_fn, params, opt_state, start: int, n_steps: int, key,
          history: list, ckpt: Path, save, tc: TrainConfig, progress: bool):
    """Run ``step_fn`` from ``start`` to ``n_steps``, checkpointing; returns the state."""
    bar = tqdm(range(start, n_steps), desc=phase, disable=not progress, initial=start,
               total=n_steps, unit="step")
    last_saved = start
    for step in bar:
        new_params, new_opt, loss, gnorm = step_fn(params, opt_state,
                                                   jax.random.fold_in(key, step))
        loss, gnorm = float(loss), float(gnorm)
        if not (np.isfinite(loss) and np.isfinite(gnorm)):
            raise TrainingDiverged(
                f"{phase}: the loss became {loss} (gradient norm {gnorm}) at step {step}; "
                f"stopped. The last good checkpoint ({ckpt}, {phase} step {last_saved}) is "
                "kept; lower the learning rate or check the scenes for bad pixels")
        params, opt_state = new_params, new_opt
        history.append((phase, step, loss, gnorm))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")
        if (step + 1) % tc.checkpoint_every == 0 or step + 1 == n_steps:
            save(phase, step + 1, params, opt_state)
            last_saved = step + 1
    return params, opt_state


def train(tc: TrainConfig, progress: bool = True, *,
          scenes: Sequence[xr.Dataset] | None = None) -> AmortizedGuide:
    """Train (or resume training) a guide as configured; write it to ``tc.out`` and return
    it. See the module docstring for the phases.

    Parameters
    ----------
    tc : TrainConfig
    progress : bool
        Show progress bars.
    scenes : sequence of xarray.Dataset, optional
        The scenes of ``tc.scenes``, read (e.g. :func:`bayesfluo.io.read_scene`), in the
        same order: needed when ``tc.finetune_steps > 0``.

    Raises
    ------
    TrainingDiverged
        If the loss or its gradient becomes non-finite.
    ValueError
        If a checkpoint in ``tc.out`` is from another configuration, ``start_from`` is
        another instrument's model, or fine-tuning lacks its scenes.
    """
    if tc.finetune_steps and (scenes is None or len(scenes) != len(tc.scenes)):
        raise ValueError(f"fine-tuning needs the {len(tc.scenes)} scene(s) of tc.scenes, "
                         "read (bayesfluo.io.read_scene), as train(..., scenes=[...])")
    t0 = time.perf_counter()
    out = Path(tc.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pkl"
    fp = tc.fingerprint()
    inst = get_instrument(tc.instrument)
    cfg = tc.model
    key = jax.random.PRNGKey(tc.seed)
    k_pool, k_stats, k_init, k_pre, k_fine = jax.random.split(key, 5)
    shard, replicated = _sharder(tc.devices)

    if tc.start_from:
        base = load_guide(tc.start_from)
        if base.instrument != tc.instrument:
            raise ValueError(f"start_from {tc.start_from} is a {base.instrument} model, "
                             f"not {tc.instrument}")
        encoder, cfg, model = base.encoder, base.config, base.model
        mean, sd = base.feature_mean, base.feature_sd
        tc = dataclasses.replace(tc, model=cfg)
    else:
        model = SifModel.for_instrument(inst.name, cfg)
    pool = None
    if tc.pretrain_steps or not tc.start_from:
        pool = _pool(model, tc, k_pool, progress)

    def sim(pl, k):
        return simulate_batch(model, tc, pl, k, tc.batch_patches, inst.reference_radiance)

    if not tc.start_from:
        sim_j = jax.jit(sim)
        stats = [sim_j(pool, jax.random.fold_in(k_stats, i)) for i in range(16)]
        mean, sd = feature_statistics(stats)
        encoder = new_encoder(mean.size, model, tc.width, tc.depth, k_init)
        encoder = init_linear_skips(encoder, stats + [sim_j(pool, jax.random.fold_in(
            k_stats, 100 + i)) for i in range(200)], mean, sd)
    params, static = eqx.partition(encoder, eqx.is_inexact_array)
    history: list = []

    state = _load_checkpoint(ckpt, fp)
    phase0, step0 = "pretrain", 0
    opt_leaves = None
    if state is not None:
        params = jax.tree.unflatten(jax.tree.structure(params),
                                    [jnp.asarray(v) for v in state["params"]])
        phase0, step0, history = state["phase"], state["step"], list(state["history"])
        opt_leaves = state["opt_state"]
        mean, sd = np.asarray(state["feature_mean"]), np.asarray(state["feature_sd"])

    def saver(phase, step, p, o):
        _save_checkpoint(ckpt, dict(fingerprint=fp, phase=phase, step=step,
                                    params=jax.tree.leaves(p), opt_state=jax.tree.leaves(o),
                                    history=history, feature_mean=mean, feature_sd=sd))

    def restore_opt(opt, p):
        o = opt.init(p)
        if opt_leaves is not None:
            o = jax.tree.unflatten(jax.tree.structure(o), [jnp.asarray(v) for v in opt_leaves])
        return o

    if replicated is not None:
        params = jax.device_put(params, replicated)
    mean_j, sd_j = jnp.asarray(mean), jnp.asarray(sd)

    # --- pre-training --------------------------------------------------------------------
    if tc.pretrain_steps and phase0 == "pretrain":
        opt = _optimizer(tc.learning_rate, tc.warmup_steps, tc.pretrain_steps, tc)
        opt_state = restore_opt(opt, params)

        @jax.jit
        def pre_step(p, o, k, pl):
            b = shard(sim(pl, k))
            feats = pixel_features(b.patches.radiance, b.ancillary, mean_j, sd_j,
                                   b.reference)

            def loss(pp):
                return npe_loss(eqx.combine(pp, static), feats, b.patches.mask, b.z_true,
                                b.u_true)
            val, g = jax.value_and_grad(loss)(p)
            upd, o2 = opt.update(g, o, p)
            return optax.apply_updates(p, upd), o2, val, optax.tree.norm(g)

        def step_fn(p, o, k):
            return pre_step(p, o, k, pool)

        params, _ = _loop("pretrain", step_fn, params, opt_state, step0, tc.pretrain_steps,
                          k_pre, history, ckpt, saver, tc, progress)
        phase0, step0, opt_leaves = "world", 0, None
    elif phase0 == "pretrain":
        phase0, step0 = "world", 0

    # --- the world: simulated scenes outside the model's family ---------------------------
    if tc.world_steps and phase0 == "world":
        if pool is None:
            pool = _pool(model, tc, k_pool, progress)
        wtrain = jax.tree.map(jnp.asarray, _world_pool(model, tc, mean, sd, out, progress))
        opt = _optimizer(tc.world_learning_rate, min(tc.warmup_steps, tc.world_steps // 10),
                         tc.world_steps, tc)
        opt_state = restore_opt(opt, params)
        k_world = jax.random.fold_in(key, 77)
        censor = tc.world_zero_sif == "censored"  # else: zero SIF is a point at the floor

        @jax.jit
        def world_step(p, o, k, pl, w):
            k1, k2 = jax.random.split(k)
            b = shard(sim(pl, k1))
            feats = pixel_features(b.patches.radiance, b.ancillary, mean_j, sd_j,
                                   b.reference)
            n_w = w.features.shape[0]
            idx = jax.random.choice(k2, n_w, (min(tc.world_batch_patches, n_w),),
                                    replace=False)
            wb = jax.tree.map(lambda v: v[idx], w)

            def loss(pp):
                enc = eqx.combine(pp, static)
                return (npe_loss(enc, feats, b.patches.mask, b.z_true, b.u_true)
                        + tc.world_weight * world_loss(
                            enc, wb.features, wb.mask, wb.u_reflectance, wb.u_f760,
                            wb.censored & censor, u_red=wb.u_red if model.has_red else None,
                            censored_red=wb.censored_red & censor))
            val, g = jax.value_and_grad(loss)(p)
            upd, o2 = opt.update(g, o, p)
            return optax.apply_updates(p, upd), o2, val, optax.tree.norm(g)

        def wstep_fn(p, o, k):
            return world_step(p, o, k, pool, wtrain)

        params, _ = _loop("world", wstep_fn, params, opt_state, step0, tc.world_steps,
                          k_world, history, ckpt, saver, tc, progress)
        phase0, step0, opt_leaves = "finetune", 0, None
    elif phase0 == "world":
        phase0, step0 = "finetune", 0

    # --- fine-tuning on scenes --------------------------------------------------------------
    if tc.finetune_steps:
        data = scene_inputs(scenes, model, tc.patch_size, mean, sd, inst.reference_radiance)
        n_patch = data.patches.ndvi.shape[0]
        bs = min(tc.finetune_batch_patches, n_patch)
        opt = _optimizer(tc.finetune_learning_rate, min(tc.warmup_steps, tc.finetune_steps
                                                        // 10), tc.finetune_steps, tc)
        opt_state = restore_opt(opt, params)
        n_pix = float(np.sum(np.asarray(data.patches.mask)))
        elbo = Trace_ELBO()
        skeleton = eqx.combine(params, static)  # its weights are the parameter map's
        scale = bs / n_patch / max(n_pix / n_patch, 1.0)  # loss per pixel of a minibatch

        @jax.jit
        def fine_step(p, o, k, d):
            guide = partial(guide_program, skeleton, model, features=d.features)

            def loss(pp):
                return scale * elbo.loss(k, {"encoder$params": pp}, model.batch_program,
                                         guide, d.patches, subsample_size=bs)
            val, g = jax.value_and_grad(loss)(p)
            upd, o2 = opt.update(g, o, p)
            return optax.apply_updates(p, upd), o2, val, optax.tree.norm(g)

        def step_fn(p, o, k):
            return fine_step(p, o, k, data)

        if phase0 == "finetune":
            params, _ = _loop("finetune", step_fn, params, opt_state, step0,
                              tc.finetune_steps, k_fine, history, ckpt, saver, tc, progress)

    encoder = eqx.combine(jax.device_get(params), static)
    ranges = {"cos_sza": (float(np.cos(np.radians(tc.ranges["sza_deg"][1]))),
                          float(np.cos(np.radians(tc.ranges["sza_deg"][0])))),
              "vza_deg": tc.ranges["vza_deg"],
              "height_km": tuple(v / 1000 for v in tc.ranges["height_m"]),
              "surface_altitude_km": tuple(v / 1000 for v in tc.ranges["surface_altitude_m"]),
              "log_noise_sd": tuple(float(np.log(inst.reference_radiance / v))
                                    for v in tc.ranges["snr"][::-1])}
    if model.top_of_canopy:  # a tower looks at nadir; its irradiance's level is an input
        del ranges["vza_deg"]
        if isinstance(pool, TowerPool):
            level = np.log(np.maximum(np.asarray(pool.irradiance).mean(-1) / np.pi, 1e-3)
                           / inst.reference_radiance)
            ranges["log_irradiance"] = (float(level.min()), float(level.max()))
    wall = time.perf_counter() - t0
    info = dict(pretrain_steps=tc.pretrain_steps, finetune_steps=tc.finetune_steps,
                batch_patches=tc.batch_patches, n_atmospheres=tc.n_atmospheres,
                seed=tc.seed, scenes=[Path(s).name for s in tc.scenes],
                ranges={k: list(v) for k, v in tc.ranges.items()},
                nuisance={k: list(v) for k, v in tc.nuisance.items()},
                spectroscopy=SPECTROSCOPY,
                final_loss=history[-1][2] if history else None,
                wall_time_s_last_session=round(wall, 1), fingerprint=fp,
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    guide = AmortizedGuide(encoder, tc.instrument, cfg, tc.patch_size, mean, sd, ranges,
                           dict(width=tc.width, depth=tc.depth), info, model)
    if pool is not None:
        info["fit_chi2_quantiles"] = fit_chi2_quantiles(guide, tc, pool, k_stats)
    if tc.world_steps:
        # the poor_fit reference: the fit on held-out world scenes (the model's own
        # simulations fit better than any real scene; their quantiles are kept too)
        info["fit_chi2_quantiles_prior"] = info.pop("fit_chi2_quantiles", None)
        info.update(world_holdout_calibration(guide, tc))
        info["world"] = dict(scenes=tc.world_scenes, size=tc.world_size,
                             prosail_every=tc.world_prosail_every, seed=tc.world_seed,
                             steps=tc.world_steps, holdout=tc.world_holdout)
    guide.save(out)
    _write_history(out / "history.csv", history)
    return guide


def fit_chi2_quantiles(guide: AmortizedGuide, tc: TrainConfig, pool: TrainingPool,
                       key: jax.Array, n_batches: int = 64) -> dict:
    """Quantiles of the reduced chi-square of the fit at the guide's posterior mean
    (:func:`bayesfluo.inference.guide.fit_chi2`) on fresh simulations from the model: the
    reference for the ``poor_fit`` flag of a retrieval (a pixel the model explains as
    well as its own simulations passes; the plug-in fit is not exact, so the textbook
    chi-square quantile would flag good pixels)."""
    model = guide.model
    ref = get_instrument(tc.instrument).reference_radiance
    params, static = eqx.partition(guide.encoder, eqx.is_inexact_array)
    encode = jax.jit(lambda p, f, m: eqx.combine(p, static).encode(f, m))

    @jax.jit
    def one(k):
        b = simulate_batch(model, tc, pool, k, tc.batch_patches, ref)
        feats = pixel_features(b.patches.radiance, b.ancillary,
                               jnp.asarray(guide.feature_mean), jnp.asarray(guide.feature_sd),
                               b.reference)
        return fit_chi2(model, encode(params, feats, b.patches.mask), b.patches)

    c2 = np.concatenate([np.asarray(one(jax.random.fold_in(key, 10_000 + i))).ravel()
                         for i in range(n_batches)])
    return {str(q): float(np.quantile(c2, q)) for q in (0.5, 0.9, 0.99, 0.999)}


#: First seed of the calibration scenes (:attr:`TrainConfig.calibration_scenes`): the
#: world's are from 1,000,000, ``benchmarks/offmodel_validation.py``'s from 900,000
CALIBRATION_SEED = 800_000


def _calibration_scene(instrument: str, i: int, size: int, fm) -> xr.Dataset:
    """Calibration scene ``i``: the simulator at its defaults (even ``i``) or on PROSAIL
    surfaces at nominal conditions (odd)."""
    seed = CALIBRATION_SEED + i
    surf = (prosail_surface((size, size), np.random.default_rng(seed), sza_deg=30.0)
            if i % 2 else None)
    return simulate_scene(instrument, (size, size), seed=seed, model=fm, surface=surf)


def _world_seeds(tc: TrainConfig) -> tuple[list[int], list[int]]:
    """Seeds of the world scenes: training, held out (the last ``world_holdout``)."""
    seeds = [tc.world_seed + i for i in range(tc.world_scenes)]
    return seeds[:-tc.world_holdout or None], seeds[len(seeds) - tc.world_holdout:]


def _pool(model: SifModel, tc: TrainConfig, key: jax.Array, progress: bool
          ) -> TrainingPool | TowerPool:
    """The pre-training pool: atmospheres with their band operators, or a tower's
    irradiance spectra (:func:`bayesfluo.inference.tower.build_tower_pool`)."""
    if model.top_of_canopy:
        return build_tower_pool(model, tc.ranges, key, tc.n_atmospheres, progress)
    return build_pool(model, tc, key, tc.n_atmospheres, progress)


def _world_pool(model: SifModel, tc: TrainConfig, mean, sd, out: Path,
                progress: bool) -> WorldPool:
    """The world phase's training patches, simulated once and kept in ``out`` (a killed
    run resumes without simulating them again; one killed while simulating them, at the
    next scene: ``world_pool.parts/`` keeps each scene's until the pool is written)."""
    path = out / "world_pool.npz"
    fp = tc.fingerprint()
    if path.exists():
        with np.load(path) as z:
            # a pool of an older bayesfluo (fewer targets) is simulated again
            if str(z["fingerprint"]) == fp and all(f in z for f in WorldPool._fields):
                return WorldPool(*(z[f] for f in WorldPool._fields))
    train_seeds, _ = _world_seeds(tc)
    parts = out / "world_pool.parts"
    pool = build_world_pool(model, train_seeds, (tc.world_size, tc.world_size), tc.ranges,
                            tc.world_prosail_every, tc.patch_size, mean, sd, progress,
                            parts_dir=parts, tag=fp)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, fingerprint=fp, **pool._asdict())
    shutil.rmtree(parts, ignore_errors=True)
    return pool


#: The F760 (and F687) sd factors tried by :func:`world_holdout_calibration`
INFLATION_FACTORS = np.round(np.arange(0.5, 6.001, 0.05), 2)


class HoldoutPixels(NamedTuple):
    """The held-out calibration scenes' usable pixels (:func:`holdout_pixels`), flat (n,).

    ``hits`` (and ``hits687``, two-peak windows, else None) are (factors, n): whether the
    shortest 90 % interval with the F760 (F687) coordinate's sd scaled by each of
    :data:`INFLATION_FACTORS` holds the truth. ``family``: 0 the world's held-out scenes,
    1 the simulator's defaults, 2 PROSAIL surfaces at nominal conditions."""
    chi2: np.ndarray
    ratio: np.ndarray
    spike: np.ndarray
    hits: np.ndarray
    hits687: np.ndarray | None
    ndvi: np.ndarray
    family: np.ndarray


def holdout_pixels(guide: AmortizedGuide, tc: TrainConfig) -> HoldoutPixels:
    """The guide's fit check and intervals on every usable pixel of the held-out world
    scenes and the calibration scenes (:func:`world_holdout_calibration` reduces them)."""
    model = guide.model
    inst = get_instrument(tc.instrument)
    params, static = eqx.partition(guide.encoder, eqx.is_inexact_array)
    encode = jax.jit(lambda p, f, m: eqx.combine(p, static).encode(f, m))
    chi2 = jax.jit(fit_check)
    factors = INFLATION_FACTORS

    @jax.jit
    def hdi(q, ndvi, p0, c):
        qq = inflate_f760(q, model, jnp.full(ndvi.shape, c))
        f = summaries(qq, model, ndvi, p0)["f760"]
        return f["lo90"], f["hi90"]

    @jax.jit
    def interval687(q, ndvi, p0, c):  # the red coordinate's sd scaled by c
        qq = inflate_f760(q, model, jnp.ones(ndvi.shape), jnp.full(ndvi.shape, c))
        f = summaries(qq, model, ndvi, p0)["f687"]
        return f["lo90"], f["hi90"]

    _, seeds = _world_seeds(tc)

    def scenes():
        for seed in seeds:
            i = seed - tc.world_seed
            yield world_scene(tc.instrument, seed, (tc.world_size, tc.world_size), tc.ranges,
                              bool(tc.world_prosail_every) and i % tc.world_prosail_every
                              == tc.world_prosail_every - 1, model.fm)
        for i in range(tc.calibration_scenes):
            yield _calibration_scene(tc.instrument, i, tc.world_size, model.fm)

    red = model.has_red
    c2, ratio, spike, hits, hits687, ndvis, family = [], [], [], [], [], [], []
    for k, sc in enumerate(scenes()):
        bands = scene_bands(sc, tc.instrument)
        if model.top_of_canopy:
            d = tower_inputs(sc, model, guide.feature_mean, guide.feature_sd,
                             inst.reference_radiance, tc.patch_size, bands)
            f760_true = _series_truth(d, sc)
            f687_true = _series_truth(d, sc, "true_f687") if red else None
        else:
            grid = PatchGrid((sc.sizes["y"], sc.sizes["x"]), tc.patch_size)
            d = guide_inputs(sc, grid, slice(None), model, guide.feature_mean,
                             guide.feature_sd, inst.reference_radiance, device=True,
                             bands=bands)
            f760_true = grid.to_patches(np.asarray(sc["true_f760"].values))
            f687_true = grid.to_patches(np.asarray(sc["true_f687"].values)) if red else None
        q = encode(params, d.features, d.patches.mask)
        # the fit is judged on the scene's own bands, as a retrieval judges it
        m = model if same_grid(bands, model, sc.sizes["band"]) else model_on_scene_grid(
            model, bands)
        fit = chi2(m, q, d.patches)
        v = np.asarray(fit.chi2)
        ok = np.asarray(d.patches.mask) > 0
        c2.append(v[ok])
        spike.append(np.asarray(fit.spike)[ok])
        ratio.append(patch_relative_chi2(np.where(ok, v, np.nan))[ok])
        truth = f760_true[ok]
        hit = []
        for c in factors:
            lo, hi = hdi(q, d.patches.ndvi, d.patches.surface_pressure0, c)
            hit.append((truth >= np.asarray(lo)[ok]) & (truth <= np.asarray(hi)[ok]))
        hits.append(np.stack(hit))
        if red:
            t687, hit = f687_true[ok], []
            for c in factors:
                lo, hi = interval687(q, d.patches.ndvi, d.patches.surface_pressure0, c)
                hit.append((t687 >= np.asarray(lo)[ok]) & (t687 <= np.asarray(hi)[ok]))
            hits687.append(np.stack(hit))
        ndvis.append(np.asarray(d.patches.ndvi)[ok])
        # holdout families: the world's scenes (0), the simulator's defaults (1), PROSAIL
        # surfaces at nominal conditions (2)
        j = k - len(seeds)
        family.append(np.full(int(ok.sum()), 0 if j < 0 else 1 + j % 2))
    return HoldoutPixels(np.concatenate(c2), np.concatenate(ratio), np.concatenate(spike),
                         np.concatenate(hits, 1),
                         np.concatenate(hits687, 1) if red else None,
                         np.concatenate(ndvis), np.concatenate(family))


def world_holdout_calibration(guide: AmortizedGuide, tc: TrainConfig) -> dict:
    """The guide's references on the held-out world scenes
    (:func:`bayesfluo.inference.world.world_scene`, never trained on):

    ``fit_chi2_quantiles``, ``fit_chi2_ratio_quantiles``
        Quantiles of the reduced chi-square of the fit at the guide's posterior mean
        (:func:`bayesfluo.inference.guide.fit_chi2`, on each scene's own bands) and of its
        ratio to the patch's median (:func:`~bayesfluo.inference.guide.patch_relative_chi2`):
        the references of the ``poor_fit`` flag; ``fit_spike_quantiles`` those of the
        spike statistic (:class:`~bayesfluo.inference.guide.FitCheck`). A pixel that fits
        as well as the simulator's scenes (terrain, smile, aerosol, canopies the model
        does not describe exactly) passes; spikes, broken bands and pixels unlike their
        neighbours do not.
    ``f760_sd_inflation``
        Factors on the F760 posterior sd in the guide's coordinate per NDVI class, for
        pixels whose fit chi-square exceeds the 0.99 quantile on the model's own draws
        (``chi2_min``; the others keep the guide's intervals, calibrated on the prior)
        (:func:`~bayesfluo.inference.guide.f760_inflation`,
        :func:`~bayesfluo.inference.guide.inflate_f760`): for each class the smallest
        factor (0.5 to 6, steps of 0.05) whose shortest 90 % intervals hold the
        truth for >= 90 % of its held-out pixels in each holdout family (the world's
        scenes, and with ``calibration_scenes`` the simulator's defaults and PROSAIL
        surfaces; families of fewer than 50 such pixels do not count; 1 where none does).
        Amortization and the misfit the guide cannot see leave its F760 intervals too
        narrow (or too wide) on scenes the model did not generate; this is their
        temperature scaling, fitted on scenes apart from both the training and the
        validation (``benchmarks/offmodel_validation.py``) scenes.
    ``f687_sd_inflation``
        Windows with the O2-B band: the same for the red peak's coordinate, judged by
        F687's shortest 90 % intervals (:func:`~bayesfluo.inference.guide.calibrate`),
        for every pixel of its class (``chi2_min`` None): the guide's F687 is not
        calibrated where the model fits either (held-out FloX series that the model fits
        as its own draws: about 80 % coverage), the red peak being weak and its shape
        outside the model's family.
    """
    # the factors are for pixels that fit worse than the model's own draws (above their
    # 0.99 quantile): below it the guide is calibrated as it is (factor 1)
    chi2_min = (guide.info.get("fit_chi2_quantiles_prior") or {}).get("0.99")
    return holdout_calibration(holdout_pixels(guide, tc), chi2_min)


def holdout_calibration(px: HoldoutPixels, chi2_min: float | None) -> dict:
    """The references and sd factors of :func:`world_holdout_calibration` from its
    held-out pixels ``px``; the F760 factors act on pixels whose fit chi-square exceeds
    ``chi2_min`` (every pixel where None)."""
    c2, ratio, spike, hits, h687, ndvi, family = px
    factors = INFLATION_FACTORS
    qs = (0.5, 0.9, 0.95, 0.99, 0.999)
    cls = np.digitize(ndvi, F760_INFLATION_EDGES)
    misfit = c2 > chi2_min if chi2_min is not None else np.ones(c2.size, bool)

    def smallest(sel, hits=hits):
        # the smallest factor whose intervals hold the truth for >= 90 % of ``sel`` in
        # every holdout family (the largest of the families' smallest factors); a family
        # with fewer than 50 such pixels does not decide it (1 where none does)
        need = [1.0]
        for fam in np.unique(family):
            pick = sel & (family == fam)
            if pick.sum() >= 50:
                ok_c = np.flatnonzero(hits[:, pick].mean(1) >= 0.9)
                need.append(float(factors[ok_c[0]] if ok_c.size else factors[-1]))
        return max(need) if len(need) > 1 else 1.0

    n_cls = len(F760_INFLATION_EDGES) + 1
    inflation = [smallest((cls == k) & misfit) for k in range(n_cls)]
    out = {}
    if h687 is not None:  # F687's shortest intervals, the red peak's coordinate scaled
        out["f687_sd_inflation"] = {
            "ndvi_edges": list(F760_INFLATION_EDGES),
            "factors": [smallest(cls == k, h687) for k in range(n_cls)],
            "chi2_min": None, "holdout_pixels": int(ndvi.size)}
    return out | {"fit_chi2_quantiles": {str(q): float(np.quantile(c2, q)) for q in qs},
            "fit_chi2_ratio_quantiles": {str(q): float(np.quantile(ratio, q)) for q in qs},
            "fit_spike_quantiles": {str(q): float(np.quantile(spike, q)) for q in qs},
            "f760_sd_inflation": {"ndvi_edges": list(F760_INFLATION_EDGES),
                                  "factors": inflation, "chi2_min": chi2_min,
                                  "holdout_pixels": int(ndvi.size),
                                  "holdout_pixels_misfit": int(misfit.sum())}}


def _series_truth(d: GuideInputs, scene: xr.Dataset, name: str = "true_f760") -> np.ndarray:
    """A simulated series' truth ``name`` cut into the patches of ``d`` (N, P)
    (:func:`bayesfluo.inference.guide.tower.series_patches`: the padding repeats the
    last scan)."""
    n_patch, p = d.input_flag.shape
    rows = np.minimum(np.arange(n_patch * p), scene.sizes["time"] - 1)
    return np.asarray(scene[name].values)[rows].reshape(n_patch, p)


def _write_history(path: Path, history: list) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write("phase,step,loss,grad_norm\n")
            for ph, s, loss, g in history:
                f.write(f"{ph},{s},{loss:.6g},{g:.6g}\n")


def scene_inputs(scenes: Sequence[xr.Dataset], model: SifModel, patch_size: int,
                 feature_mean, feature_sd, reference_radiance: float) -> GuideInputs:
    """All patches with a usable pixel of the ``scenes`` and the guide's inputs for them
    (:func:`bayesfluo.inference.guide.guide_inputs`), concatenated (JAX arrays with a
    leading patch dimension).

    Raises
    ------
    ValueError
        If there are no scenes or one is not of the model's instrument and band grid.
    """
    parts = []
    for scene in scenes:
        check_scene_for_model(scene, model.instrument, model.fm.band_centre_nm)
        grid = PatchGrid((scene.sizes["y"], scene.sizes["x"]), patch_size)
        d = guide_inputs(scene, grid, slice(None), model, feature_mean, feature_sd,
                         reference_radiance)
        keep = d.patches.mask.sum(1) > 0
        parts.append(jax.tree.map(lambda v, keep=keep: v[keep], d))
    if not parts:
        raise ValueError("no scenes to fine-tune on")
    return jax.tree.map(lambda *v: jnp.asarray(np.concatenate(v)), *parts)
