"""Diagnostics that return plain numbers: information bounds, calibration checks."""

from bayesfluo.diagnostics.calibration import (
    DEFAULT_ALPHA,
    contraction,
    coverage,
    coverage_test,
    sbc_ranks,
    sbc_test,
    standardized_residuals,
)
from bayesfluo.diagnostics.fisher import LATENTS, cramer_rao_f760, fisher_information

__all__ = ["DEFAULT_ALPHA", "LATENTS", "contraction", "coverage", "coverage_test",
           "cramer_rao_f760", "fisher_information", "sbc_ranks", "sbc_test",
           "standardized_residuals"]
