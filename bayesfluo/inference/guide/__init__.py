"""The amortized guide: an encoder from a patch of spectra to the posterior of its latents.

One forward pass of :class:`Encoder` maps a patch of ``P`` pixels (their normalised
spectra and ancillary inputs, :func:`pixel_features`) to a Gaussian approximation of the
posterior of the patch's model (:meth:`bayesfluo.model.SifModel.program`, the guide's
``model``) in NumPyro's unconstrained space:

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

Modules: :mod:`~bayesfluo.inference.guide.encoder` (the network and its output),
:mod:`~bayesfluo.inference.guide.features` (its inputs: reference spectra, ancillary
inputs, a scene's patches and features in one compiled pass),
:mod:`~bayesfluo.inference.guide.summaries` (closed-form posterior summaries, draws, the
fit at the posterior mean), :mod:`~bayesfluo.inference.guide.program` (the guide as a
NumPyro program, for SVI), :mod:`~bayesfluo.inference.guide.store` (a trained guide, saved
and loaded).
"""

from bayesfluo.inference.guide.encoder import Encoder, GuideOutput, new_encoder
from bayesfluo.inference.guide.features import (
    ANCILLARY,
    GuideInputs,
    ReferenceExpansion,
    ancillary_inputs,
    expand_reference,
    geometry_coordinates,
    guide_inputs,
    pixel_features,
    ratio_resample,
    read_guide_rows,
    reference_expansion,
    reference_function,
    reference_log_radiance,
)
from bayesfluo.inference.guide.program import guide_program
from bayesfluo.inference.guide.store import AmortizedGuide, load_guide
from bayesfluo.inference.guide.summaries import (
    F760_INFLATION_EDGES,
    FitCheck,
    calibrate,
    f760_inflation,
    fit_check,
    fit_chi2,
    inflate_f760,
    marginal_local,
    patch_relative_chi2,
    peak_weights,
    predicted_radiance,
    sample_draws,
    summaries,
)

__all__ = ["Encoder", "GuideOutput", "new_encoder", "ANCILLARY", "GuideInputs",
           "ReferenceExpansion", "ancillary_inputs", "expand_reference",
           "geometry_coordinates", "guide_inputs", "pixel_features", "ratio_resample",
           "read_guide_rows", "reference_expansion",
           "reference_function", "reference_log_radiance", "guide_program",
           "AmortizedGuide", "load_guide", "fit_chi2",
           "fit_check", "FitCheck", "marginal_local", "patch_relative_chi2", "peak_weights",
           "F760_INFLATION_EDGES", "f760_inflation", "inflate_f760", "calibrate",
           "predicted_radiance", "sample_draws", "summaries"]
