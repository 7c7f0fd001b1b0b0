"""Training data from the world the model does not describe exactly.

The guide's pre-training draws spectra from the model's own prior predictive: the same
B-spline reflectance, Gaussian SIF peaks, one atmosphere and one sensor state per patch
that the guide's model assumes. Real scenes (and the package's own fine-grid simulator,
:func:`bayesfluo.scene.simulate.simulate_scene`) differ: pressure follows the terrain
inside a patch, aerosol varies, the Angstrom exponent and the diffuse-path factor are not
the model's, the spectral shift and the FWHM change across track (smile), canopies are
not B-splines and SIF peaks have other shapes (:mod:`bayesfluo.scene.prosail_surface`).

A guide that has only seen prior draws is over-confident on such data. Here simulated
scenes of both kinds, under conditions drawn broadly, are turned into the guide's inputs
and *targets in the guide's coordinates*: the SIF at 760 nm (the quantity users read;
censored below :data:`F760_FLOOR`, where the truth is zero: water, roofs, bare soil) and
the reflectance's least-squares projection onto the model's B-spline family. Trained on
them by the amortized forward KL (:func:`bayesfluo.inference.train.world_loss`), the
guide's F760 posterior marginalises what a pixel cannot pin: intervals widen exactly as
much as the misfit costs.

Seeds: training scenes use ``seed0 + i`` (``TrainConfig.world_seed``, 1,000,000 by
default); the validation in ``benchmarks/offmodel_validation.py`` uses seeds from
900,000 and the demo seed 0, never used in training.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from bayesfluo.inference.guide import GuideInputs, guide_inputs, peak_weights
from bayesfluo.inference.guide.tower import tower_inputs
from bayesfluo.instruments import get_instrument
from bayesfluo.io.atomic import atomic_path
from bayesfluo.model import SifModel, inverse_knee_softplus
from bayesfluo.physics.forward import bands_on_fine_grid, build_forward_model
from bayesfluo.physics.surface import bspline_basis
from bayesfluo.scene.grid import PatchGrid
from bayesfluo.scene.prosail_surface import prosail_surface
from bayesfluo.scene.simulate import simulate_scene

__all__ = ["WorldPool", "F760_FLOOR", "world_conditions", "world_grid",
           "perturbed_grid", "N_WORLD_GRIDS", "world_scene",
           "world_targets", "series_targets",
           "build_world_pool"]

#: SIF (mW m-2 sr-1 nm-1) below which a true F760 counts as zero: the target is then
#: censored (the guide is asked for mass below it, not for a value).
F760_FLOOR = 1e-3


class WorldPool(NamedTuple):
    """Patches of simulated scenes with the guide's inputs and targets (numpy arrays with
    a leading patch dimension N, P pixels per patch).

    Attributes
    ----------
    features : (N, P, F) float32
        The encoder's normalised inputs.
    mask : (N, P) float32
        1 for usable pixels.
    u_reflectance : (N, P, K) float32
        The true reflectance's projection onto the model's B-spline family, in the
        reflectance prior's standard-normal coordinates.
    u_f760 : (N, P) float32
        The true F760 in the guide's SIF coordinate (softplus knee of the prior scale),
        floored at :data:`F760_FLOOR`.
    censored : (N, P) bool
        True F760 below :data:`F760_FLOOR` (the target is "at most ``u_f760``").
    scene : (N,) int32
        Index of the scene a patch comes from.
    u_red : (N, P) float32
        Where the window holds the O2-B band: the red SIF peak's coordinate that gives
        the true F687 together with the far-red peak that gives the true F760 (the
        model's two peaks fitted at the two wavelengths users read), floored at
        :data:`F760_FLOOR`; 0 elsewhere.
    censored_red : (N, P) bool
        That red part of F687 below the floor, or no O2-B band (the target is "at most
        ``u_red``").
    """

    features: np.ndarray
    mask: np.ndarray
    u_reflectance: np.ndarray
    u_f760: np.ndarray
    censored: np.ndarray
    scene: np.ndarray
    u_red: np.ndarray
    censored_red: np.ndarray

    def take(self, idx) -> WorldPool:
        """The patches ``idx``."""
        return WorldPool(*(np.asarray(v)[idx] for v in self))


def world_conditions(rng: np.random.Generator, ranges: dict, instrument: str) -> dict:
    """Scene-level conditions of a world scene, drawn from the training ``ranges``
    (:func:`bayesfluo.inference.train.default_ranges`) and broad priors: keyword
    arguments of :func:`~bayesfluo.scene.simulate.simulate_scene`."""
    inst = get_instrument(instrument)

    def u(name):
        lo, hi = ranges[name]
        return float(rng.uniform(lo, hi))

    cond = dict(sza_deg=u("sza_deg"), surface_altitude_m=u("surface_altitude_m"),
                snr=u("snr"), aot550=float(np.exp(rng.uniform(np.log(0.04), np.log(0.45)))),
                day_of_year=int(rng.integers(1, 366)), saa_deg=float(rng.uniform(0, 360)),
                heading_deg=float(rng.uniform(0, 360)))
    if inst.platform == "airborne":
        cond["altitude_m"] = u("height_m")
    return cond


#: Distinct perturbed band grids per instrument (each compiles the simulator once).
N_WORLD_GRIDS = 12


def world_grid(rng: np.random.Generator, instrument: str) -> dict | None:
    """A band grid of the instrument's own, as real products have, or None (the
    nominal grid) for half of the draws: one of :data:`N_WORLD_GRIDS` grids
    (:func:`perturbed_grid`)."""
    if rng.uniform() < 0.5:
        return None
    return _indexed(instrument, int(rng.integers(N_WORLD_GRIDS)))


@functools.cache
def _grid_model(instrument: str, i: int):
    return build_forward_model(instrument, **perturbed_grid(instrument, i))


def perturbed_grid(instrument: str, i: int) -> dict:
    """The ``i``-th perturbed band grid of an instrument (fixed by ``i``): centres
    shifted by up to half a band, FWHM scaled by 0.8-1.2, and for a third of them another
    sampling step (0.8-1.6 times the nominal); keyword arguments of
    :func:`~bayesfluo.physics.forward.build_forward_model` (bands whose responses leave
    the model's fine grid left out)."""
    rng = np.random.default_rng([i, 31])
    inst = get_instrument(instrument)
    c = inst.band_centres()
    step = float(np.median(np.diff(c)))
    shift = rng.uniform(-0.5, 0.5) * step
    fwhm = inst.fwhm_nm * rng.uniform(0.8, 1.2)
    if rng.uniform() < 1 / 3:
        centres = np.arange(c[0] + shift, c[-1] + 1e-9, step * rng.uniform(0.8, 1.6))
    else:
        centres = c + shift
    keep = bands_on_fine_grid(inst, centres, fwhm)
    return dict(band_centre_nm=centres[keep], band_fwhm_nm=fwhm)


def _indexed(instrument: str, i: int) -> dict:
    return {"index": i} | perturbed_grid(instrument, i)


def world_scene(instrument: str, seed: int, size: tuple[int, int], ranges: dict,
                prosail: bool, fm=None) -> xr.Dataset:
    """One simulated scene of the world (the fine-grid simulator with everything varying;
    PROSAIL surfaces with off-family SIF where ``prosail``), conditions from
    :func:`world_conditions`, the band grid from :func:`world_grid` (``fm``: the nominal
    forward model, to save its set-up) and in a third of the scenes up to three bands
    masked as bad detector elements (``band_mask``), all from ``seed``."""
    rng = np.random.default_rng([seed, 7])
    cond = world_conditions(rng, ranges, instrument)
    surface = (prosail_surface(size, rng, sza_deg=cond["sza_deg"]) if prosail else None)
    grid = world_grid(rng, instrument)
    if grid is not None:
        fm = _grid_model(instrument, grid["index"])
    sc = simulate_scene(instrument, size, seed=seed, surface=surface, model=fm, **cond)
    if rng.uniform() < 1 / 3:
        bad = rng.choice(sc.sizes["band"], int(rng.integers(1, 4)), replace=False)
        mask = np.ones(sc.sizes["band"], np.int8)
        mask[bad] = 0
        sc["band_mask"] = ("band", mask, {"long_name": "usable band (1) or bad (0)"})
    return sc


def world_targets(scene: xr.Dataset, model: SifModel) -> tuple[np.ndarray, ...]:
    """Targets of every pixel (y, x) of a simulated scene (every time step of a tower's
    series) in the guide's coordinates: ``(u_reflectance (y, x, K), u_f760 (y, x),
    censored (y, x), u_red (y, x), censored_red (y, x))`` (see :class:`WorldPool`)."""
    basis = bspline_basis(np.asarray(scene["wavelength"].values, np.float64),
                          np.asarray(model.fm.knots_nm, np.float64))  # (B, K), any grid
    refl = np.asarray(scene["true_reflectance"].transpose(..., "band").values, np.float64)
    coeffs = np.linalg.lstsq(basis, refl.reshape(-1, refl.shape[-1]).T, rcond=None)[0].T
    coeffs = np.clip(coeffs, 1e-3, 1.0 - 1e-3)
    mu, chol = (np.asarray(a, np.float64) for a in model.reflectance_prior())
    logit = np.log(coeffs / (1.0 - coeffs)) - mu
    u_r = np.linalg.solve(chol, logit.T).T.reshape(refl.shape[:-1] + (-1,))
    f = np.asarray(scene["true_f760"].values, np.float64)
    scale = np.asarray(model.sif_scale(jnp.asarray(scene["ndvi"].values, jnp.float32)),
                       np.float64)
    censored = f < F760_FLOOR
    u_f = np.asarray(inverse_knee_softplus(np.maximum(f, F760_FLOOR) / scale), np.float64)
    u_red = np.zeros_like(u_f)
    censored_red = np.ones_like(censored)
    if model.has_red and "true_f687" in scene:
        # F687 = scale (w_far ks(u_far) + ratio w_red ks(u_red)) with scale ks(u_far) =
        # F760 (the guide's summaries): the red peak's share of the true F687
        w_far, w_red = peak_weights(687.0)
        red = (np.asarray(scene["true_f687"].values, np.float64) - w_far * np.maximum(f, 0.0))
        red = red / (model.cfg.sif_red_ratio * w_red)
        censored_red = red < F760_FLOOR
        u_red = np.asarray(inverse_knee_softplus(np.maximum(red, F760_FLOOR) / scale),
                           np.float64)
    return (u_r.astype(np.float32), u_f.astype(np.float32), censored,
            u_red.astype(np.float32), censored_red)


def series_targets(inputs: GuideInputs, scene: xr.Dataset, model: SifModel
                   ) -> tuple[np.ndarray, ...]:
    """The targets of a simulated tower series (:func:`world_targets`) cut into the
    patches of its ``inputs`` (:func:`bayesfluo.inference.guide.tower.tower_inputs`;
    padding repeats the last scan): ``(u_reflectance (N, P, K), u_f760, censored,
    u_red, censored_red (N, P))``."""
    n_patch, p = inputs.input_flag.shape
    rows = np.minimum(np.arange(n_patch * p), scene.sizes["time"] - 1)
    return tuple(np.asarray(v)[rows].reshape((n_patch, p) + np.asarray(v).shape[1:])
                 for v in world_targets(scene, model))


def build_world_pool(model: SifModel, seeds, size: tuple[int, int], ranges: dict,
                     prosail_every: int, patch_size: int, feature_mean, feature_sd,
                     progress: bool = True, parts_dir: str | Path | None = None,
                     tag: str = "") -> WorldPool:
    """Simulate the scenes ``seeds`` (every ``prosail_every``-th with PROSAIL surfaces; 0:
    none) and return their usable patches with inputs and targets. A tower's model
    gets series of ``size[0] * size[1]`` scans (on PROSAIL surfaces one per scan), read
    by :func:`bayesfluo.inference.guide.tower.tower_inputs`.

    With ``parts_dir``, each scene's patches are kept there as it is done (one ``.npz``
    per scene, written atomically, labelled ``tag``: the caller's configuration), and a
    scene whose file has the same ``tag`` is read instead of simulated: a run killed
    part way (a 1001-band scene takes 20-50 s on 2 cores) resumes at the next scene."""
    inst = get_instrument(model.instrument)
    parts = []
    seeds = list(seeds)
    if parts_dir is not None:
        parts_dir = Path(parts_dir)
        parts_dir.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(tqdm(seeds, desc="world scenes", disable=not progress,
                                  unit="scene")):
        path = None if parts_dir is None else parts_dir / f"scene_{i:05d}_{int(seed)}.npz"
        if path is not None and path.exists():
            with np.load(path) as z:
                if str(z["tag"]) == tag and all(f in z for f in WorldPool._fields):
                    parts.append(WorldPool(*(z[f] for f in WorldPool._fields)))
                    continue
        part = _world_part(model, inst, i, seed, size, ranges, prosail_every, patch_size,
                           feature_mean, feature_sd)
        if path is not None:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, tag=tag, **part._asdict())
        parts.append(part)
    return WorldPool(*(np.concatenate(v) for v in zip(*parts, strict=True)))


def _world_part(model: SifModel, inst, i: int, seed: int, size, ranges, prosail_every: int,
                patch_size: int, feature_mean, feature_sd) -> WorldPool:
    """The usable patches of world scene ``i`` (seed ``seed``) of
    :func:`build_world_pool`."""
    pros = bool(prosail_every) and i % prosail_every == prosail_every - 1
    sc = world_scene(model.instrument, int(seed), size, ranges, pros, model.fm)
    if model.top_of_canopy:
        d = tower_inputs(sc, model, feature_mean, feature_sd, inst.reference_radiance,
                         patch_size)
        targets = series_targets(d, sc, model)
    else:
        grid = PatchGrid((sc.sizes["y"], sc.sizes["x"]), patch_size)
        d = guide_inputs(sc, grid, slice(None), model, feature_mean, feature_sd,
                         inst.reference_radiance, with_radiance=False)
        targets = tuple(grid.to_patches(v) for v in world_targets(sc, model))
    mask = np.asarray(d.patches.mask, np.float32)
    keep = mask.sum(1) > 0
    u_r, u_f, cens, u_red, cens_red = (np.asarray(v)[keep] for v in targets)
    return WorldPool(np.asarray(d.features, np.float32)[keep], mask[keep], u_r,
                     u_f, cens, np.full(int(keep.sum()), i, np.int32), u_red, cens_red)
