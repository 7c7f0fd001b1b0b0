"""One chunk of a retrieval: the plan that cuts a scene into chunks of patch rows, and the
compiled per-chunk function every executor runs.

:func:`plan_retrieval` checks a scene against the guide's model and cuts it into chunks of
whole patch rows (every chunk padded to the same static shape, so one compilation);
:func:`retrieve_chunk` reads one chunk's rows, runs the encoder once per patch (optionally
refines its posterior, :mod:`bayesfluo.inference.refine`) and turns the Gaussian into
per-pixel posterior summaries in closed form (:func:`bayesfluo.inference.guide.summaries`).
Optionally it checks each pixel's fit (:func:`bayesfluo.inference.guide.fit_chi2`: the
radiance predicted at the posterior mean through each pixel's band operator, from one
expansion of the operator over the scene (:mod:`bayesfluo.model.scene_expansion`, centred
by the plan on a sample of the scene's patches) or exact where a patch leaves it, against
the model's noise, :meth:`~bayesfluo.model.SifModel.noise_variance`) and draws posterior
samples.

The same plan and per-chunk function serve the in-memory retrieval
(:func:`bayesfluo.retrieval.api.retrieve`), the streamed one
(:mod:`bayesfluo.retrieval.streaming`) and the dask one
(:mod:`bayesfluo.retrieval.executors`), so results do not depend on which runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
    FitCheck,
    GuideInputs,
    GuideOutput,
    calibrate,
    fit_check,
    fit_chi2,
    guide_inputs,
    patch_relative_chi2,
    predicted_radiance,
    read_guide_rows,
    sample_draws,
    summaries,
)
from bayesfluo.inference.refine import laplace_refine
from bayesfluo.instruments import get_instrument
from bayesfluo.model import Patch, SifModel, knee_softplus
from bayesfluo.model.scene_expansion import (
    SceneExpansion,
    expansion_centre,
    has_scene_expansion,
    operator_inputs,
    scene_expansion,
)
from bayesfluo.physics.forward import ForwardModel
from bayesfluo.retrieval.acceptance import out_of_distribution, refinement_accepted
from bayesfluo.retrieval.devices import default_chunk_pixels
from bayesfluo.retrieval.result import QUALITY_FLAGS
from bayesfluo.scene.bands import SceneBands, model_on_scene_grid, same_grid, scene_bands
from bayesfluo.scene.grid import PatchGrid, PixelRows, check_scene_for_model, reference_centre

__all__ = ["RetrieveOptions", "Retriever", "RetrievalPlan", "plan_retrieval",
           "read_chunk", "chunk_inputs", "retrieve_chunk"]


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
        cores, 8,192 pixels ran 1.2-1.6x faster than 32,768 or 65,536. Default
        (:func:`bayesfluo.retrieval.devices.default_chunk_pixels`): 8,192 on a CPU, 8x
        that on a GPU (not yet measured there).
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
    refine : bool or None
        Refine each patch's posterior from the guide's to the Laplace approximation at
        the model's mode (:mod:`bayesfluo.inference.refine`): agrees with NUTS where the
        guide alone pays an amortization gap, at a fraction of its speed. Patches where
        the refinement does not converge, moves the atmosphere more than
        :data:`bayesfluo.retrieval.acceptance.REFINE_MAX_MOVE` guide sd or (with
        ``quality``) fits the radiance worse than the guide's mean
        (:data:`~bayesfluo.retrieval.acceptance.REFINE_FIT_SLACK`) keep the guide's
        posterior and are flagged ``not_refined``. None (the default): images are not
        refined (~800x the guide's cost), a tower's scans are (~7x, still hundreds of
        scans per second; :func:`bayesfluo.retrieval.series.retrieve_series`).
    refine_batch : int
        Patches refined at once (memory: ~20 MB each for HyPlant FLUO).
    """

    quality: bool = True
    n_draws: int = 0
    seed: int = 0
    chunk_pixels: int = field(default_factory=default_chunk_pixels)
    poor_fit_rate: float = 1e-3
    ood_sigma: float = 8.0
    min_patch_pixels: int = 8
    refine: bool | None = None
    refine_batch: int = 16


def _f760_draws(model: SifModel, q: GuideOutput, ndvi, keys, n: int) -> jax.Array:
    """(n, N, P) draws of F760 (mW m-2 sr-1 nm-1), each patch from its own key (chunking
    does not matter)."""
    _, u = jax.vmap(lambda qq, k: sample_draws(qq, k, n))(q, keys)   # (N, n, P, D)
    return jnp.moveaxis(model.sif_scale(ndvi[:, None])
                        * knee_softplus(u[..., model.fm.n_basis]), 1, 0)


def _chunk_maps(guide: AmortizedGuide, model: SifModel, static, params, feats, mask, ndvi,
                p0, input_flag, ood_sigma, patches: Patch | None = None,
                expansion: SceneExpansion | None = None, *,
                min_patch_pixels: int, refine_batch: int | None = None,
                with_fit: bool = False, exact_outside: bool = True):
    """Encoder (and refinement), summaries and flags of a chunk of patches: the
    posterior in the guide's form, the summaries ``{"Q_stat": (N, P) float32}``
    (per-patch quantities repeated over their pixels, NaN where the input is unusable),
    the quality flags (N, P) of everything but the fit, and (``with_fit``) the fit
    check (:class:`~bayesfluo.inference.guide.FitCheck`, (N, P) each) of the final
    posterior mean (else None; through the scene's operator ``expansion`` where given,
    ``exact_outside`` as in :func:`~bayesfluo.inference.guide.predicted_radiance`)."""
    q = eqx.combine(params, static).encode(feats, mask)
    fit = (fit_check(model, q, patches, expansion, exact_outside=exact_outside)
           if with_fit else None)
    c2 = None if fit is None else fit.chi2
    # the guide's F760 intervals as calibrated on held-out scenes where the pixel fits
    # worse than the model's own draws (a guide trained on the world; none otherwise)
    q = calibrate(q, model, guide.info, ndvi, c2)
    not_refined = jnp.zeros(mask.shape[0], bool)
    if refine_batch:
        q_ref, info = laplace_refine(model, q, patches, batch_size=refine_batch)
        fit_ref = (fit_check(model, q_ref, patches, expansion, exact_outside=exact_outside)
                   if with_fit else None)
        accept = refinement_accepted(info, None if fit_ref is None else fit_ref.chi2,
                                     None if fit is None else fit.chi2, mask)

        def pick(new, old):
            return jnp.where(accept.reshape(accept.shape + (1,) * (new.ndim - 1)), new, old)

        q = jax.tree.map(pick, q_ref, q)
        if with_fit:
            fit = jax.tree.map(pick, fit_ref, fit)
        not_refined = ~accept
    summ = summaries(q, model, ndvi, p0, both_peaks=model.has_red)
    ok = input_flag == 0
    out = {}
    for name, st in summ.items():
        for stat, v in st.items():
            if v.ndim == 1:  # per patch -> its pixels
                v = jnp.broadcast_to(v[:, None], mask.shape)
            out[f"{name}_{stat}"] = jnp.where(ok, v.astype(jnp.float32), jnp.nan)
    flag = jnp.where(ok, 0, QUALITY_FLAGS["masked_input"])
    flag |= jnp.where(out_of_distribution(guide, feats, ood_sigma, ANCILLARY) & ok,
                      QUALITY_FLAGS["out_of_distribution"], 0)
    few = jnp.sum(mask, 1) < min_patch_pixels
    flag |= jnp.where(few[:, None] & ok, QUALITY_FLAGS["few_pixels_in_patch"], 0)
    flag |= jnp.where(not_refined[:, None] & ok, QUALITY_FLAGS["not_refined"], 0)
    return q, out, flag, fit


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
            return summaries(q, model, ndvi, p0, both_peaks=model.has_red)

        def draws(q, ndvi, key, n):
            return _f760_draws(model, q, ndvi, key, n)

        self.encode_fn, self.chi2_fn = encode, partial(fit_chi2, model)
        self.summarise, self.chi2 = summarise, jax.jit(self.chi2_fn)
        self.predict = jax.jit(partial(predicted_radiance, model))
        self.draws = jax.jit(draws, static_argnums=3)
        self._chunk_fn = jax.jit(partial(_chunk_maps, guide, model, static),
                                 static_argnames=("min_patch_pixels", "refine_batch",
                                                  "with_fit", "exact_outside"))
        self._expand = (jax.jit(partial(scene_expansion, model))
                        if has_scene_expansion(model) else None)
        self._inputs = jax.jit(jax.vmap(
            lambda p, z: operator_inputs(model, p, z, model.patch_delta(p))))
        self._expansions: dict = {}
        self._leaves: set = set()   # centres where a patch left the expansion

    def on_grid(self, bands: SceneBands | None) -> Retriever:
        """The retriever of a scene on its own band grid: its model's forward model on
        the scene's usable bands (:func:`bayesfluo.scene.bands.model_on_scene_grid`) for
        the fit check and the refinement, the same guide; ``self`` on the model's grid.
        Built once per grid."""
        if bands is None or same_grid(bands, self.guide.model):
            return self
        key = (bands.centre_nm.round(5).tobytes(), bands.fwhm_nm.round(5).tobytes(),
               bands.response_exponent)
        cache = self.__dict__.setdefault("_grids", {})
        if key not in cache:
            if len(cache) > 8:
                cache.clear()
            cache[key] = Retriever(self.guide,
                                   model_on_scene_grid(self.guide.model, bands).fm)
        return cache[key]

    def encode(self, features: jax.Array, mask: jax.Array) -> GuideOutput:
        """The guide's output for normalised features (N, P, F) and a mask (N, P)."""
        return self.encode_fn(self.params, features, mask)

    def operator_inputs(self, d: GuideInputs) -> np.ndarray:
        """The physical inputs of the band operator of each patch of ``d`` at the guide's
        posterior mean and the patch's mean pixel offsets (N, 12)
        (:func:`bayesfluo.model.scene_expansion.operator_inputs`), NaN for patches
        without a usable pixel."""
        q = self.encode(jnp.asarray(d.features), jnp.asarray(d.patches.mask))
        u = np.asarray(self._inputs(d.patches, q.shared_loc), np.float64)
        return np.where((np.asarray(d.patches.mask).sum(-1) > 0)[:, None], u, np.nan)

    def fit_expansion(self, centre: tuple | None) -> SceneExpansion | None:
        """The model's operator expanded about ``centre`` (the plan's ``fit_centre``;
        built once per centre): the fit check's operators
        (:func:`bayesfluo.inference.guide.predicted_radiance`); None without a centre or
        for a model without a built-in atmosphere."""
        if centre is None or self._expand is None:
            return None
        if centre not in self._expansions:
            if len(self._expansions) > 8:
                self._expansions.clear()
            self._expansions[centre] = self._expand(jnp.asarray(centre, jnp.float32))
        return self._expansions[centre]

    def left_expansion(self, centre: tuple | None) -> bool:
        """Whether a patch of a chunk checked so far left the trust region of the
        expansion about ``centre`` (its operator was then exact)."""
        return centre in self._leaves

    def chunk_maps(self, d: GuideInputs, ood_sigma: float, min_patch_pixels: int,
                   refine_batch: int | None = None, with_fit: bool = False,
                   fit_centre: tuple | None = None
                   ) -> tuple[GuideOutput, dict, jax.Array, FitCheck | None]:
        """The guide's output, the per-pixel posterior summaries and the quality flags of
        a chunk, in one compiled pass (``d`` from
        :func:`bayesfluo.inference.guide.guide_inputs`, with the radiance when refining).
        With ``refine_batch``, the guide's output is refined
        (:func:`bayesfluo.inference.refine.laplace_refine`, that many patches at once)
        before the summaries. With ``with_fit`` (``d`` with the radiance), the fit check
        (:func:`bayesfluo.inference.guide.fit_check`) of each pixel is returned too, and
        its chi-square sets where the guide's F760 intervals are widened
        (:func:`bayesfluo.inference.guide.f760_inflation`); with ``fit_centre`` (the
        plan's), through the scene's operator expansion (:meth:`fit_expansion`)."""
        p = d.patches
        expansion = self.fit_expansion(fit_centre) if with_fit else None

        def run(exact_outside: bool):
            return self._chunk_fn(self.params, d.features, p.mask, p.ndvi,
                                  p.surface_pressure0, d.input_flag, ood_sigma,
                                  p if (refine_batch or with_fit) else None, expansion,
                                  min_patch_pixels=min_patch_pixels,
                                  refine_batch=refine_batch, with_fit=with_fit,
                                  exact_outside=exact_outside)

        if expansion is None or fit_centre in self._leaves:
            return run(True)
        # first without the per-patch fallback to the exact operator outside the
        # expansion's trust region (its check costs a third of the fit check); again
        # with it where a patch left the region (its operator is then exact; the others'
        # are the same to float rounding), and with it from then on for this centre (a
        # scene whose swath edges leave the region would otherwise pay twice per chunk)
        out = run(False)
        if bool(jnp.all(out[3].inside)):
            return out
        self._leaves.add(fit_centre)
        return run(True)

    def posterior(self, d: GuideInputs) -> GuideOutput:
        """The guide's output for the inputs ``d`` of a batch of patches
        (:func:`bayesfluo.inference.guide.guide_inputs`)."""
        q = self.encode(jnp.asarray(d.features), jnp.asarray(d.patches.mask))
        c2 = None if d.patches.radiance is None else self.chi2(q, d.patches)
        return calibrate(q, self.model, self.guide.info, d.patches.ndvi, c2)


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
    bands : SceneBands or None
        The scene's usable bands (:func:`bayesfluo.scene.bands.scene_bands`).
    chi2_ratio_max : float or None
        ``poor_fit`` threshold of a pixel's ``fit_chi2`` over its patch's median
        (:func:`bayesfluo.inference.guide.patch_relative_chi2`), where the guide was
        calibrated for it (a guide trained on the world).
    spike_max : float or None
        ``poor_fit`` threshold of a pixel's spike statistic
        (:class:`bayesfluo.inference.guide.FitCheck`), where the guide was calibrated for
        it.
    fit_centre : tuple of float or None
        Where the fit check's operator expansion is centred
        (:func:`fit_expansion_centre`; None: exact operators).
    """

    grid: PatchGrid
    rows_per_chunk: int
    n_chunk_patches: int
    centre: tuple
    reference_radiance: float
    chi2_max: float | None
    bands: SceneBands | None = None
    chi2_ratio_max: float | None = None
    spike_max: float | None = None
    fit_centre: tuple | None = None

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
                   fm: ForwardModel, retriever: Retriever | None = None) -> RetrievalPlan:
    """Check a scene against the guide's model and cut it into chunks of patch rows.

    Reads the scene's band grid and its per-pixel geometry; with the quality check and a
    ``retriever`` (the guide's), also the radiance of a few patch rows, where the fit
    check's operator expansion is centred (:func:`fit_expansion_centre`).

    Raises
    ------
    ValueError
        If the scene cannot be retrieved with the guide (see
        :func:`bayesfluo.scene.grid.check_scene_for_model`).
    """
    check_scene_for_model(scene, guide.instrument, guide.model.fm.band_centre_nm)
    bands = scene_bands(scene, guide.instrument)
    ny, nx = scene.sizes["y"], scene.sizes["x"]
    s = guide.patch_size
    grid = PatchGrid((ny, nx), s)
    # no more patch rows per chunk than the scene has (padding a small scene up to a
    # full chunk would only add work)
    rows_per_chunk = max(1, min(grid.n_rows, options.chunk_pixels // (grid.n_cols * s * s)))
    chi2_max = ratio_max = spike_max = None
    if options.quality:
        known_s = guide.info.get("fit_spike_quantiles") or {}
        spike_max = (float(known_s[str(1.0 - options.poor_fit_rate)])
                     if str(1.0 - options.poor_fit_rate) in known_s else None)
        known_r = guide.info.get("fit_chi2_ratio_quantiles") or {}
        qr = str(1.0 - options.poor_fit_rate)
        ratio_max = float(known_r[qr]) if qr in known_r else None
        known = guide.info.get("fit_chi2_quantiles", {})
        q = str(1.0 - options.poor_fit_rate)
        chi2_max = (float(known[q]) if q in known else
                    float(scipy.stats.chi2.isf(options.poor_fit_rate, fm.n_bands) /
                          fm.n_bands))
    plan = RetrievalPlan(grid, rows_per_chunk, rows_per_chunk * grid.n_cols,
                         reference_centre(scene),
                         float(get_instrument(guide.instrument).reference_radiance), chi2_max,
                         bands, ratio_max, spike_max)
    if options.quality and retriever is not None:
        plan = replace(plan, fit_centre=fit_expansion_centre(scene, plan, retriever))
    return plan


#: Patch rows of a scene (evenly spaced) on which the fit check's expansion is centred
FIT_CENTRE_ROWS = 4


def fit_expansion_centre(scene: xr.Dataset, plan: RetrievalPlan, r: Retriever
                         ) -> tuple | None:
    """The centre of the scene's operator expansion (:meth:`Retriever.fit_expansion`):
    the median operator inputs, at the guide's posterior mean, of the patches of
    :data:`FIT_CENTRE_ROWS` evenly spaced patch rows (every row of a scene of at most
    twice as many). It depends on the scene only (not
    on the chunks), so every chunk, executor and chunk size checks the fit alike. None for a
    model without a built-in atmosphere or a scene with no usable patch in those rows."""
    r = r.on_grid(plan.bands)
    if not has_scene_expansion(r.model):
        return None
    # a fixed number of evenly spaced patch rows (all of a scene of at most twice as
    # many), whatever the chunks: the centre, and so every pixel's fit, does not depend
    # on the chunk size
    n = plan.grid.n_rows
    k = n if n <= 2 * FIT_CENTRE_ROWS else FIT_CENTRE_ROWS
    picks = sorted({int(i) for i in np.linspace(0, n - 1, k).round()})
    s, ny = plan.grid.patch_size, plan.grid.shape[0]
    rows = np.concatenate([np.arange(i * s, min((i + 1) * s, ny)) for i in picks])
    guide = r.guide
    # padded as a chunk where they fit in one (a scene of one chunk then compiles its
    # input preparation once; the padding is masked, so the centre is the same)
    n_patch = len(picks) * plan.grid.n_cols
    d = guide_inputs(scene.isel(y=rows), plan.grid, slice(None), guide.model,
                     guide.feature_mean, guide.feature_sd, plan.reference_radiance,
                     plan.centre, with_radiance=True, device=True, bands=plan.bands,
                     n_patches=(plan.n_chunk_patches if n_patch <= plan.n_chunk_patches
                                else None))
    u = r.operator_inputs(d)
    if not np.isfinite(u).all(-1).any():
        return None
    return tuple(float(v) for v in np.asarray(expansion_centre(r.model, u)))


def read_chunk(scene: xr.Dataset, pr0: int, plan: RetrievalPlan, r: Retriever
               ) -> PixelRows:
    """The rows of the chunk starting at patch row ``pr0``, read from ``scene`` as
    :func:`chunk_inputs` reads them (:func:`bayesfluo.inference.guide.read_guide_rows`):
    a reading thread runs it for the next chunk while this one is computed
    (:class:`bayesfluo.retrieval.streaming.LocalExecutor`)."""
    return read_guide_rows(scene.isel(y=plan.rows(pr0)), slice(None), r.guide.model,
                           plan.bands)


def chunk_inputs(scene: xr.Dataset, pr0: int, plan: RetrievalPlan, r: Retriever,
                 options: RetrieveOptions, *, sliced: bool = False,
                 pixels: PixelRows | None = None) -> GuideInputs:
    """The patches of the chunk starting at patch row ``pr0`` and the guide's inputs for
    them, as the retrieval reads them (padded to ``plan.n_chunk_patches`` patches; the
    radiance included where the options check the fit or refine; JAX arrays).

    Only the chunk's rows of ``scene`` are read (``scene.isel(y=rows)``, lazy for a file
    opened lazily or a dask-backed scene); with ``sliced``, ``scene`` is already just
    those rows (``plan.rows(pr0)``); with ``pixels`` (:func:`read_chunk`), nothing is
    read here.
    """
    guide = r.guide
    return guide_inputs(scene if sliced else scene.isel(y=plan.rows(pr0)), plan.grid,
                        slice(None), guide.model, guide.feature_mean, guide.feature_sd,
                        plan.reference_radiance, plan.centre,
                        n_patches=plan.n_chunk_patches,
                        with_radiance=options.quality or options.refine, device=True,
                        bands=plan.bands, pixels=pixels)


def retrieve_chunk(scene: xr.Dataset, pr0: int, plan: RetrievalPlan, r: Retriever,
                   options: RetrieveOptions, *, sliced: bool = False,
                   pixels: PixelRows | None = None) -> dict[str, np.ndarray]:
    """Posterior summaries of one chunk of patch rows (starting at patch row ``pr0``).

    Only the chunk's rows of ``scene`` are read (``scene.isel(y=rows)``, lazy for a file
    opened lazily or a dask-backed scene); with ``sliced``, ``scene`` is already just
    those rows (``plan.rows(pr0)``); with ``pixels``, the rows already read
    (:func:`read_chunk`).

    Returns
    -------
    dict of numpy.ndarray
        Image pieces (rows, x) of every output variable (``f760_draws``: (rows, x, draw)),
        in the order :func:`bayesfluo.retrieval.api.retrieve` writes them.
    """
    opt, grid = options, plan.grid
    r = r.on_grid(plan.bands)
    s = grid.patch_size
    rows = plan.rows(pr0)
    ny = rows.stop - rows.start
    n = -(-ny // s) * grid.n_cols  # the chunk's patches (then padding up to a full chunk)
    d = chunk_inputs(scene, pr0, plan, r, opt, sliced=sliced, pixels=pixels)
    q, maps, flag, fit = r.chunk_maps(d, opt.ood_sigma, opt.min_patch_pixels,
                                      opt.refine_batch if opt.refine else None,
                                      with_fit=opt.quality, fit_centre=plan.fit_centre)
    input_flag = np.asarray(d.input_flag)[:n]
    bad = input_flag != 0
    extra = {}
    if opt.quality:
        extra["fit_chi2"], extra["fit_spike"] = fit.chi2, fit.spike
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
        poor = c2 > plan.chi2_max
        if plan.chi2_ratio_max is not None:
            poor |= patch_relative_chi2(c2) > plan.chi2_ratio_max
        if plan.spike_max is not None:
            poor |= np.where(bad, False, extra["fit_spike"][:n] > plan.spike_max)
        flag = flag | np.where(poor, QUALITY_FLAGS["poor_fit"], 0)
    if opt.n_draws:
        dr = np.moveaxis(extra["f760_draws"][:, :n], 0, -1).astype(np.float32)
        out["f760_draws"] = np.where(bad[..., None], np.nan, dr)
    out["quality_flag"] = flag.astype(np.int8)
    out["input_flag"] = input_flag.astype(np.int8)
    return {k: grid.to_image(v, ny) for k, v in out.items()}
