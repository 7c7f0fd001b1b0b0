"""What a retrieval accepts: inputs inside the guide's training distribution, and a
Laplace refinement that reached the model's mode.

Shared by the image retrieval (:mod:`bayesfluo.retrieval.chunk`) and the tower series
(:mod:`bayesfluo.retrieval.series`), so both flag ``out_of_distribution`` and
``not_refined`` by one rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bayesfluo.inference.guide import AmortizedGuide
from bayesfluo.inference.refine import RefineInfo

__all__ = ["REFINE_MAX_MOVE", "REFINE_FIT_SLACK", "out_of_distribution", "patch_median",
           "refinement_accepted"]

#: Largest move of a patch's shared latents by the refinement, in the guide's posterior
#: sd (Mahalanobis distance), that is accepted: the 0.999 quantile of a chi distribution
#: with 3 degrees of freedom (atmosphere and sensor latents), so a guide calibrated on the
#: patch rejects 0.1 % of correct refinements.
REFINE_MAX_MOVE = 4.03
#: A refined patch whose median fit chi-square exceeds the guide's by more than this
#: (relative, plus as much absolute) is not at the model's mode: the guide is kept. At a
#: mode the fit is as good as the guide's or better; on the model's own draws both sit
#: near 1 with a spread of about 0.02 over a patch's 64 pixels.
REFINE_FIT_SLACK = 0.05


def out_of_distribution(guide: AmortizedGuide, feats, ood_sigma: float,
                        ancillary: Sequence[str]):
    """Pixels (or scans) whose inputs leave the guide's training distribution.

    Parameters
    ----------
    guide : AmortizedGuide
    feats : array (N, P, F)
        The guide's normalised inputs (JAX or numpy): the spectral features, then the
        ``ancillary`` ones.
    ood_sigma : float
        A spectral feature beyond this many training sd marks the pixel.
    ancillary : sequence of str
        Names of the trailing ancillary features (checked against ``guide.ranges``,
        with 2 % of the range and 0.5 % of the value as tolerance: a satellite's height
        above the ground, trained at its orbit's altitude, varies with the terrain by
        ~0.3 %).

    Returns
    -------
    bool array (N, P)
    """
    xp = np if isinstance(feats, np.ndarray) else jnp
    nb = feats.shape[-1] - len(ancillary)
    bad = xp.max(xp.abs(feats[..., :nb]), -1) > ood_sigma
    raw = (feats[..., nb:] * xp.asarray(guide.feature_sd[nb:])
           + xp.asarray(guide.feature_mean[nb:]))
    for name, (lo, hi) in guide.ranges.items():
        if name in ancillary:
            v = raw[..., list(ancillary).index(name)]
            tol = 0.02 * (hi - lo) + 0.005 * max(abs(lo), abs(hi)) + 1e-3
            bad |= (v < lo - tol) | (v > hi + tol)
    return bad


def patch_median(v: jax.Array, mask: jax.Array) -> jax.Array:
    """Median (N,) over each patch's usable pixels of ``v`` (N, P); +inf without any."""
    med = jnp.nanmedian(jnp.where(mask > 0, v, jnp.nan), axis=1)
    return jnp.where(jnp.isnan(med), jnp.inf, med)


def refinement_accepted(info: RefineInfo, chi2_refined: jax.Array | None,
                        chi2_guide: jax.Array | None, mask: jax.Array) -> jax.Array:
    """Patches (N,) whose Laplace refinement is kept.

    The refinement finds the mode of the model's posterior; where the model does not
    describe the data (terrain, smile, aerosol it has no term for) that mode can sit far
    from what the guide, trained on such data, reads. A patch keeps the guide where the
    Newton steps did not converge, where its shared latents moved beyond
    :data:`REFINE_MAX_MOVE` of the guide's sd, or (given the fit chi-squares (N, P) of
    both posterior means) where the refined mean fits the radiance worse than the
    guide's by more than :data:`REFINE_FIT_SLACK` (converged on the operator's
    expansion, not at the model's mode: its wrong answer would look trustworthy).
    """
    accept = info.converged & (info.moved <= REFINE_MAX_MOVE)
    if chi2_refined is not None:
        accept &= (patch_median(chi2_refined, mask)
                   <= (1 + REFINE_FIT_SLACK) * patch_median(chi2_guide, mask)
                   + REFINE_FIT_SLACK)
    return accept
