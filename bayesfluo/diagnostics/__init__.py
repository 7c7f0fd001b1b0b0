"""Diagnostics that return plain numbers: information bounds, calibration checks."""

from bayesfluo.diagnostics.fisher import LATENTS, cramer_rao_f760, fisher_information

__all__ = ["LATENTS", "cramer_rao_f760", "fisher_information"]
