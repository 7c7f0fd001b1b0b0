"""One chunk of a retrieval: the plan that cuts a scene into chunks of patch rows, and the
compiled per-chunk function every executor runs.

:func:`plan_retrieval` checks a scene against the guide's model and cuts it into chunks of
whole patch rows (every chunk padded to the same static shape, so one compilation);
:func:`retrieve_chunk` reads one chunk's rows, runs the encoder once per patch (optionally
refines its posterior, :mod:`bayesfluo.inference.refine`) and turns the Gaussian into
per-pixel posterior summaries in closed form (:func:`bayesfluo.inference.guide.summaries`).
Optionally it checks each pixel's fit (:func:`bayesfluo.inference.guide.fit_chi2`: the
radiance predicted at the posterior mean through the patch's exact band operator,
:meth:`~bayesfluo.model.SifModel.operator`, against the model's noise,
:meth:`~bayesfluo.model.SifModel.noise_variance`) and draws posterior samples.

The same plan and per-chunk function serve the in-memory retrieval
(:func:`bayesfluo.retrieval.api.retrieve`), the streamed one
(:mod:`bayesfluo.retrieval.streaming`) and the dask one
(:mod:`bayesfluo.retrieval.executors`), so results do not depend on which runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import xarray as xr

from bayesfluo.inference.guide import (
    ANCILLARY,
    AmortizedGuide,
    GuideInputs,
    GuideOutput,
    fit_chi2,
    guide_inputs,
    predicted_radiance,
    sample_draws,
    summaries,
)
from bayesfluo.inference.refine import laplace_refine
from bayesfluo.instruments import get_instrument
from bayesfluo.model import Patch, SifModel, knee_softplus
from bayesfluo.physics.forward import ForwardModel
from bayesfluo.retrieval.result import QUALITY_FLAGS
from bayesfluo.scene.grid import PatchGrid, check_scene_for_model, reference_centre

__all__ = ["RetrieveOptions", "Retriever", "RetrievalPlan", "plan_retrieval",
           "chunk_inputs", "retrieve_chunk"]


@dataclass(frozen=True)
class RetrieveOptions:
    """Options of a retrieval (:func:`bayesfluo.retrieval.api.retrieve`).

    Attributes
    ----------
    quality : bool
        Check each pixel's fit (``poor_fit`` flag, ``fit_chi2``); costs one exact band
        operator per patch.
    n_draws : int
        Posterior draws of F760 to write per pixel (0: none).
    seed : int
        Seed of the draws.
    chunk_pixels : int
        About how many pixels go through the encoder at once (whole patch rows; memory
        bound). Small chunks keep the encoder's activations in the CPU's caches: on 2
        cores, 8,192 pixels ran 1.2-1.6x faster than 32,768 or 65,536.
    poor_fit_rate : float
        False-flag rate of ``poor_fit`` on data the model explains: the threshold is the
        ``1 - poor_fit_rate`` quantile of ``fit_chi2`` on the model's own simulations,
        measured after training (``info["fit_chi2_quantiles"]`` of the guide: 0.99 or
        0.999); without it, the chi-square quantile with one degree of freedom per band.
    ood_sigma : float
        An input whose normalised spectrum leaves the training distribution by more than
        this many standard deviations in any band is flagged ``out_of_distribution``.
    min_patch_pixels : int
        Patches with fewer usable pixels are flagged ``few_pixels_in_patch`` (their
        atmosphere rests on little data).
    refine : bool
        Refine each patch's posterior from the guide's to the Laplace approximation at
        the model's mode (:mod:`bayesfluo.inference.refine`): agrees with NUTS where the
        guide alone pays an amortization gap, at a fraction of its speed. Patches where
        the refinement does not converge keep the guide's posterior and are flagged
        ``not_refined``.
    refine_batch : int
        Patches refined at once (memory: ~20 MB each for HyPlant FLUO).
    """

    quality: bool = True
    n_draws: int = 0
    seed: int = 0
    chunk_pixels: int = 8192
    poor_fit_rate: float = 1e-3
    ood_sigma: float = 8.0
    min_patch_pixels: int = 8
    refine: bool = False
    refine_batch: int = 16


def _f760_draws(model: SifModel, q: GuideOutput, ndvi, keys, n: int) -> jax.Array:
    """(n, N, P) draws of F760 (mW m-2 sr-1 nm-1), each patch from its own key (chunking
    does not matter)."""
    _, u = jax.vmap(lambda qq, k: sample_draws(qq, k, n))(q, keys)   # (N, n, P, D)
    return jnp.moveaxis(model.sif_scale(ndvi[:, None])
                        * knee_softplus(u[..., model.fm.n_basis]), 1, 0)


def _ood(guide: AmortizedGuide, feats, ood_sigma):
    """Pixels whose inputs leave the training distribution (N, P) bool (JAX or numpy
    features (N, P, F), normalised)."""
    xp = np if isinstance(feats, np.ndarray) else jnp
    nb = feats.shape[-1] - len(ANCILLARY)
    bad = xp.max(xp.abs(feats[..., :nb]), -1) > ood_sigma
    raw = feats[..., nb:] * guide.feature_sd[nb:] + guide.feature_mean[nb:]
    for name, (lo, hi) in guide.ranges.items():
        if name in ANCILLARY:
            v = raw[..., ANCILLARY.index(name)]
            tol = 0.02 * (hi - lo) + 1e-3
            bad |= (v < lo - tol) | (v > hi + tol)
    return bad


def _chunk_maps(guide: AmortizedGuide, model: SifModel, static, params, feats, mask, ndvi,
                p0, input_flag, ood_sigma, patches: Patch | None = None, *,
                min_patch_pixels: int, refine_batch: int | None = None):
    """Encoder (and refinement), summaries and flags of a chunk of patches: the
    posterior in the guide's form, the summaries ``{"Q_stat": (N, P) float32}``
    (per-patch quantities repeated over their pixels, NaN where the input is unusable)
    and the quality flags (N, P) of everything but the fit."""
    q = eqx.combine(params, static).encode(feats, mask)
    not_refined = jnp.zeros(mask.shape[0], bool)
    if refine_batch:
        q, info = laplace_refine(model, q, patches, batch_size=refine_batch)
        not_refined = ~info.converged
    summ = summaries(q, model, ndvi, p0)
    ok = input_flag == 0
    out = {}
    for name, st in summ.items():
        for stat, v in st.items():
            if v.ndim == 1:  # per patch -> its pixels
                v = jnp.broadcast_to(v[:, None], mask.shape)
            out[f"{name}_{stat}"] = jnp.where(ok, v.astype(jnp.float32), jnp.nan)
    flag = jnp.where(ok, 0, QUALITY_FLAGS["masked_input"])
    flag |= jnp.where(_ood(guide, feats, ood_sigma) & ok,
                      QUALITY_FLAGS["out_of_distribution"], 0)
    few = jnp.sum(mask, 1) < min_patch_pixels
    flag |= jnp.where(few[:, None] & ok, QUALITY_FLAGS["few_pixels_in_patch"], 0)
    flag |= jnp.where(not_refined[:, None] & ok, QUALITY_FLAGS["not_refined"], 0)
    return q, out, flag


def _model_of(guide: AmortizedGuide, fm: ForwardModel | None) -> SifModel:
    """The guide's model (``guide.model``), on ``fm`` where one is given."""
    if fm is None or guide.model.fm is fm:
        return guide.model
    return guide.model.replace(fm=fm)


class Retriever:
    """Jitted retrieval functions of one guide (build once, apply to many chunks).

    Parameters
    ----------
    guide : AmortizedGuide
        A trained guide.
    fm : ForwardModel, optional
        Its instrument's forward model (default: the guide's model's).

    Attributes
    ----------
    guide : AmortizedGuide
    model : SifModel
        The guide's model: operator, surface, noise of the fit check and the refinement.
    fm : ForwardModel
        ``model.fm``.
    params
        The encoder's arrays (``encode_fn``'s first argument).
    encode_fn, chi2_fn
        The jitted encoder ``(params, features, mask) -> GuideOutput`` and the unjitted
        fit check of the model ``(q, patches) -> (N, P)``
        (:func:`bayesfluo.inference.guide.fit_chi2`), to compose in other jitted
        functions.
    chi2, predict
        Jitted: the fit check, and the radiance it compares with the data
        ``(q, patches) -> (N, P, B)`` (:func:`bayesfluo.inference.guide.predicted_radiance`).
    """

    def __init__(self, guide: AmortizedGuide, fm: ForwardModel | None = None):
        self.guide = guide
        self.model = model = _model_of(guide, fm)
        self.fm = model.fm
        params, static = eqx.partition(guide.encoder, eqx.is_inexact_array)
        self.params = params

        @jax.jit
        def encode(params, feats, mask):
            return eqx.combine(params, static).encode(feats, mask)

        @jax.jit
        def summarise(q, ndvi, p0):
            return summaries(q, model, ndvi, p0)

        def draws(q, ndvi, key, n):
            return _f760_draws(model, q, ndvi, key, n)

        self.encode_fn, self.chi2_fn = encode, partial(fit_chi2, model)
        self.summarise, self.chi2 = summarise, jax.jit(self.chi2_fn)
        self.predict = jax.jit(partial(predicted_radiance, model))
        self.draws = jax.jit(draws, static_argnums=3)
        self._chunk_fn = jax.jit(partial(_chunk_maps, guide, model, static),
                                 static_argnames=("min_patch_pixels", "refine_batch"))

    def encode(self, features: jax.Array, mask: jax.Array) -> GuideOutput:
        """The guide's output for normalised features (N, P, F) and a mask (N, P)."""
        return self.encode_fn(self.params, features, mask)

    def chunk_maps(self, d: GuideInputs, ood_sigma: float, min_patch_pixels: int,
                   refine_batch: int | None = None) -> tuple[GuideOutput, dict, jax.Array]:
        """The guide's output, the per-pixel posterior summaries and the quality flags of
        a chunk, in one compiled pass (``d`` from
        :func:`bayesfluo.inference.guide.guide_inputs`, with the radiance when refining).
        With ``refine_batch``, the guide's output is refined
        (:func:`bayesfluo.inference.refine.laplace_refine`, that many patches at once)
        before the summaries."""
        p = d.patches
        return self._chunk_fn(self.params, d.features, p.mask, p.ndvi, p.surface_pressure0,
                              d.input_flag, ood_sigma, p if refine_batch else None,
                              min_patch_pixels=min_patch_pixels, refine_batch=refine_batch)

    def posterior(self, d: GuideInputs) -> GuideOutput:
        """The guide's output for the inputs ``d`` of a batch of patches
        (:func:`bayesfluo.inference.guide.guide_inputs`)."""
        return self.encode(jnp.asarray(d.features), jnp.asarray(d.patches.mask))


@dataclass(frozen=True)
class RetrievalPlan:
    """How a scene is cut for retrieval: the same for every executor (one process,
    streamed to disk, or a dask cluster), so results do not depend on which one runs.

    Attributes
    ----------
    grid : PatchGrid
        The scene's patches.
    rows_per_chunk : int
        Patch rows per chunk (every chunk is padded to ``n_chunk_patches`` patches, so
        the jitted functions compile once).
    n_chunk_patches : int
        Patches per (padded) chunk.
    centre : tuple of float
        Whole-scene reference geometry (:func:`bayesfluo.scene.grid.reference_centre`).
    reference_radiance : float
        The instrument's reference radiance, mW m-2 sr-1 nm-1.
    chi2_max : float or None
        ``poor_fit`` threshold of ``fit_chi2`` (None without the quality check).
    """

    grid: PatchGrid
    rows_per_chunk: int
    n_chunk_patches: int
    centre: tuple
    reference_radiance: float
    chi2_max: float | None

    @property
    def starts(self) -> list[int]:
        """First patch row of each chunk."""
        return list(range(0, self.grid.n_rows, self.rows_per_chunk))

    def rows(self, pr0: int) -> slice:
        """Image rows of the chunk starting at patch row ``pr0``."""
        s = self.grid.patch_size
        return slice(pr0 * s, min((pr0 + self.rows_per_chunk) * s, self.grid.shape[0]))

    @property
    def chunk_rows(self) -> int:
        """Image rows of a full chunk (the natural chunk height of an output store)."""
        return self.rows_per_chunk * self.grid.patch_size

    def locate(self, y: int, x: int) -> tuple[int, int, int]:
        """Where the pixel (y, x) is retrieved: the first patch row of its chunk, its
        patch's index in the chunk and its index in the patch."""
        s, nc = self.grid.patch_size, self.grid.n_cols
        pr0 = (y // s) // self.rows_per_chunk * self.rows_per_chunk
        return pr0, (y // s - pr0) * nc + x // s, (y % s) * s + x % s


def plan_retrieval(scene: xr.Dataset, guide: AmortizedGuide, options: RetrieveOptions,
                   fm: ForwardModel) -> RetrievalPlan:
    """Check a scene against the guide's model and cut it into chunks of patch rows.

    Reads only the scene's band grid and its per-pixel geometry (not its radiance).

    Raises
    ------
    ValueError
        If the scene cannot be retrieved with the guide (see
        :func:`bayesfluo.scene.grid.check_scene_for_model`).
    """
    check_scene_for_model(scene, guide.instrument, fm.band_centre_nm)
    ny, nx = scene.sizes["y"], scene.sizes["x"]
    s = guide.patch_size
    grid = PatchGrid((ny, nx), s)
    # no more patch rows per chunk than the scene has (padding a small scene up to a
    # full chunk would only add work)
    rows_per_chunk = max(1, min(grid.n_rows, options.chunk_pixels // (grid.n_cols * s * s)))
    chi2_max = None
    if options.quality:
        known = guide.info.get("fit_chi2_quantiles", {})
        q = str(1.0 - options.poor_fit_rate)
        chi2_max = (float(known[q]) if q in known else
                    float(scipy.stats.chi2.isf(options.poor_fit_rate, fm.n_bands) /
                          fm.n_bands))
    return RetrievalPlan(grid, rows_per_chunk, rows_per_chunk * grid.n_cols,
                         reference_centre(scene),
                         float(get_instrument(guide.instrument).reference_radiance), chi2_max)


def chunk_inputs(scene: xr.Dataset, pr0: int, plan: RetrievalPlan, r: Retriever,
                 options: RetrieveOptions, *, sliced: bool = False) -> GuideInputs:
    """The patches of the chunk starting at patch row ``pr0`` and the guide's inputs for
    them, as the retrieval reads them (padded to ``plan.n_chunk_patches`` patches; the
    radiance included where the options check the fit or refine; JAX arrays).

    Only the chunk's rows of ``scene`` are read (``scene.isel(y=rows)``, lazy for a file
    opened lazily or a dask-backed scene); with ``sliced``, ``scene`` is already just
    those rows (``plan.rows(pr0)``).
    """
    guide = r.guide
    return guide_inputs(scene if sliced else scene.isel(y=plan.rows(pr0)), plan.grid,
                        slice(None), r.model, guide.feature_mean, guide.feature_sd,
                        plan.reference_radiance, plan.centre,
                        n_patches=plan.n_chunk_patches,
                        with_radiance=options.quality or options.refine, device=True)


def retrieve_chunk(scene: xr.Dataset, pr0: int, plan: RetrievalPlan, r: Retriever,
                   options: RetrieveOptions, *, sliced: bool = False
                   ) -> dict[str, np.ndarray]:
    """Posterior summaries of one chunk of patch rows (starting at patch row ``pr0``).

    Only the chunk's rows of ``scene`` are read (``scene.isel(y=rows)``, lazy for a file
    opened lazily or a dask-backed scene); with ``sliced``, ``scene`` is already just
    those rows (``plan.rows(pr0)``).

    Returns
    -------
    dict of numpy.ndarray
        Image pieces (rows, x) of every output variable (``f760_draws``: (rows, x, draw)),
        in the order :func:`bayesfluo.retrieval.api.retrieve` writes them.
    """
    opt, grid = options, plan.grid
    s = grid.patch_size
    rows = plan.rows(pr0)
    ny = rows.stop - rows.start
    n = -(-ny // s) * grid.n_cols  # the chunk's patches (then padding up to a full chunk)
    d = chunk_inputs(scene, pr0, plan, r, opt, sliced=sliced)
    q, maps, flag = r.chunk_maps(d, opt.ood_sigma, opt.min_patch_pixels,
                                 opt.refine_batch if opt.refine else None)
    input_flag = np.asarray(d.input_flag)[:n]
    bad = input_flag != 0
    extra = {}
    if opt.quality:
        extra["fit_chi2"] = r.chi2(q, d.patches)
    if opt.n_draws:
        first = pr0 * grid.n_cols  # index of the chunk's first patch in the scene
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(opt.seed), i))(
            jnp.arange(first, first + plan.n_chunk_patches))
        extra["f760_draws"] = r.draws(q, d.patches.ndvi, keys, opt.n_draws)
    maps, flag, extra = jax.device_get((maps, flag, extra))
    out = {k: v[:n] for k, v in maps.items()}
    flag = flag[:n]
    if opt.quality:
        c2 = np.where(bad, np.nan, extra["fit_chi2"][:n])
        out["fit_chi2"] = c2
        flag = flag | np.where(c2 > plan.chi2_max, QUALITY_FLAGS["poor_fit"], 0)
    if opt.n_draws:
        dr = np.moveaxis(extra["f760_draws"][:, :n], 0, -1).astype(np.float32)
        out["f760_draws"] = np.where(bad[..., None], np.nan, dr)
    out["quality_flag"] = flag.astype(np.int8)
    out["input_flag"] = input_flag.astype(np.int8)
    return {k: grid.to_image(v, ny) for k, v in out.items()}
