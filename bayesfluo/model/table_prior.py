"""The prior of an external atmosphere: log-normal priors around 1 of a table's
perturbations (:class:`bayesfluo.physics.external.Perturbation`), and the table with its
prior as the model's atmosphere source (:class:`ExternalModel`, given to
:class:`bayesfluo.model.SifModel` as ``table``).

The table itself (physics) is :class:`bayesfluo.physics.external.ExternalAtmosphere`; its
files are read by :mod:`bayesfluo.io.tables`. The NumPyro sites of the perturbations
(``table_<name>_z``, values ``table_<name>``) are sampled by the model object.
"""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx

from bayesfluo.physics.external import PERTURBATION_SITES, ExternalAtmosphere

__all__ = ["PerturbationPrior", "ExternalModel"]


@dataclass(frozen=True)
class PerturbationPrior:
    """Log-normal priors around 1 of the :class:`~bayesfluo.physics.external.Perturbation`
    of a table.

    Each free perturbation is ``exp(log_sd * z)``, ``z`` standard normal (sampled as
    ``table_<name>_z``; the value is recorded as ``table_<name>``). Widths (one standard
    deviation, relative):

    * ``tau_log_sd`` = 0.015: surface pressure varies with weather by about +-1 %
      (+-10 hPa) and a table is usually computed at a nominal elevation a few tens of
      metres off (0.4 % per 30 m); the O2 and Rayleigh optical depths follow it.
    * ``up_log_sd`` = 0.01: upward continuum transmittance. For an airborne sensor a few
      hundred metres up, an AOT error of 0.05 below the sensor changes it by about 1 %;
      from space (whole atmosphere below) widen it to about 0.05.
    * ``path_log_sd`` = 0.2: path radiance scales with the aerosol and Rayleigh optical
      depth below the sensor and with the phase function; +-20 % covers an AOT error of
      tens of percent. It is a small term for low-flying sensors.

    ``free`` chooses the sampled ones (the others stay 1); ``group_edges_nm`` (given to
    :func:`bayesfluo.io.tables.external_atmosphere`) sets how many ``up_scale`` values
    there are.
    """

    free: tuple[str, ...] = PERTURBATION_SITES
    tau_log_sd: float = 0.015
    up_log_sd: float = 0.01
    path_log_sd: float = 0.2

    def __post_init__(self):
        bad = [n for n in self.free if n not in PERTURBATION_SITES]
        if bad:
            raise ValueError(f"unknown table perturbation(s) {bad}; choose from "
                             f"{list(PERTURBATION_SITES)}")


class ExternalModel(eqx.Module):
    """An external atmosphere as the model's source: the resampled table and the prior of
    its perturbations (``SifModel(fm, cfg, table=ExternalModel(ext, PerturbationPrior()))``)."""

    atmosphere: ExternalAtmosphere
    prior: PerturbationPrior = eqx.field(static=True, default=PerturbationPrior())
