"""The probabilistic model of a patch: configuration, priors, the :class:`SifModel` object
(operator, prediction, noise, likelihood, NumPyro programs), the :class:`Patch` type and
the one Laplace / Newton engine."""

from bayesfluo.model.config import ATMOSPHERE_LATENTS, SENSOR_LATENTS, ModelConfig
from bayesfluo.model.patch import Patch
from bayesfluo.model.priors import (
    SIF_KNEE,
    SoftplusHalfNormal,
    inverse_knee_softplus,
    knee_softplus,
    reflectance_prior,
    reflectance_weights,
    shared_values,
    sif_scale,
)
from bayesfluo.model.sif_model import OperatorExpansion, SifModel, has_red_peak, toc_operator
from bayesfluo.model.table_prior import ExternalModel, PerturbationPrior

__all__ = ["ATMOSPHERE_LATENTS", "SENSOR_LATENTS", "ModelConfig", "Patch", "SIF_KNEE",
           "SoftplusHalfNormal", "inverse_knee_softplus", "knee_softplus",
           "reflectance_prior", "reflectance_weights", "shared_values", "sif_scale",
           "OperatorExpansion", "SifModel", "has_red_peak", "toc_operator", "ExternalModel",
           "PerturbationPrior"]
