"""Calibration checks of posteriors: simulation-based calibration, interval coverage,
posterior contraction and standardised residuals. Plain NumPy in, plain numbers out.

Thresholds come from binomial tails with a stated false-failure rate ``alpha``: a
calibrated posterior fails a test with probability at most ``alpha`` (Bonferroni over the
bins or levels tested together).

References: Talts et al. (2018), arXiv 1804.06788 (SBC); Yao et al. (2018), ICML (VSBC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["sbc_ranks", "sbc_test", "SBCResult", "coverage", "coverage_test", "CoverageResult",
           "contraction", "standardized_residuals", "DEFAULT_ALPHA"]

DEFAULT_ALPHA = 1e-4


def sbc_ranks(truth: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Rank of each true value among its posterior draws.

    Parameters
    ----------
    truth : (n_sim,)
    draws : (n_sim, n_draw)
        Posterior draws; for SBC they should be (nearly) independent, thin MCMC first.

    Returns
    -------
    ndarray of int (n_sim,)
        Number of draws below the truth, 0..n_draw (ties broken at random, seeded by the
        data so the result is reproducible).
    """
    truth = np.asarray(truth, dtype=np.float64)
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim != 2 or draws.shape[0] != truth.shape[0]:
        raise ValueError("draws must be (n_sim, n_draw) matching truth (n_sim,)")
    below = np.sum(draws < truth[:, None], axis=1)
    ties = np.sum(draws == truth[:, None], axis=1)
    rng = np.random.default_rng(below.size)
    return below + np.floor(rng.uniform(size=below.size) * (ties + 1)).astype(int)


@dataclass(frozen=True)
class SBCResult:
    """Outcome of :func:`sbc_test`: bin counts, their acceptance band and the verdict."""

    passed: bool
    counts: np.ndarray
    lower: int
    upper: int
    alpha: float
    n_bins: int


def sbc_test(ranks: np.ndarray, n_draws: int, n_bins: int | None = None,
             alpha: float = DEFAULT_ALPHA) -> SBCResult:
    """Uniformity of SBC ranks by binned counts with binomial bounds.

    Under calibration each of ``n_bins`` equal bins of the ranks 0..n_draws holds a
    Binomial(n_sim, 1/n_bins) count. The band ``[lower, upper]`` holds a single bin with
    probability ``1 - alpha / n_bins``, so a calibrated posterior fails (any bin outside)
    with probability at most ``alpha``.
    """
    ranks = np.asarray(ranks)
    n = ranks.size
    if n_bins is None:
        n_bins = int(np.clip(n // 20, 2, 20))
    if (n_draws + 1) % n_bins:
        # bins must hold equally many rank values; pick the largest divisor <= n_bins
        n_bins = max(b for b in range(2, n_bins + 1) if (n_draws + 1) % b == 0) \
            if any((n_draws + 1) % b == 0 for b in range(2, n_bins + 1)) else 1
    if n_bins < 2:
        raise ValueError(f"n_draws + 1 = {n_draws + 1} has no divisor to bin by; "
                         "use e.g. 99 or 199 draws")
    counts = np.bincount(ranks * n_bins // (n_draws + 1), minlength=n_bins)
    p = 1.0 / n_bins
    tail = alpha / n_bins / 2
    lower = int(stats.binom.ppf(tail, n, p))
    upper = int(stats.binom.isf(tail, n, p))
    passed = bool(np.all((counts >= lower) & (counts <= upper)))
    return SBCResult(passed, counts, lower, upper, alpha, n_bins)


def coverage(truth: np.ndarray, draws: np.ndarray,
             levels=(0.5, 0.8, 0.9, 0.95)) -> dict[float, np.ndarray]:
    """Whether each truth lies in the central posterior interval at each level.

    Returns level -> boolean array (n_sim,).
    """
    truth = np.asarray(truth, dtype=np.float64)
    draws = np.asarray(draws, dtype=np.float64)
    out = {}
    for level in levels:
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=1)
        out[float(level)] = (truth >= lo) & (truth <= hi)
    return out


@dataclass(frozen=True)
class CoverageResult:
    """Outcome of :func:`coverage_test` for one level."""

    level: float
    observed: float
    lower: float
    upper: float
    passed: bool


def coverage_test(hits: dict[float, np.ndarray], alpha: float = DEFAULT_ALPHA
                  ) -> list[CoverageResult]:
    """Binomial acceptance band of the coverage at each level.

    With n independent simulations, a calibrated central interval at level q holds the
    truth Binomial(n, q) times; each level's two-sided band has probability
    ``1 - alpha / n_levels``, so a calibrated posterior fails any level with probability
    at most ``alpha``. (Levels computed from the same simulations are dependent; Bonferroni
    is conservative.)
    """
    out = []
    tail = alpha / len(hits) / 2
    for level, h in hits.items():
        n = h.size
        lo = stats.binom.ppf(tail, n, level) / n
        hi = stats.binom.isf(tail, n, level) / n
        obs = float(np.mean(h))
        out.append(CoverageResult(level, obs, float(lo), float(hi), bool(lo <= obs <= hi)))
    return out


def contraction(prior_sd, posterior_sd):
    """Posterior contraction ``prior_sd / posterior_sd`` (1 = the data told nothing)."""
    return np.asarray(prior_sd, dtype=np.float64) / np.asarray(posterior_sd, dtype=np.float64)


def standardized_residuals(observed, predicted_mean, predicted_var):
    """(observed - predicted) / sqrt(predicted variance): ~N(0, 1) for a good fit."""
    return (np.asarray(observed) - np.asarray(predicted_mean)) / np.sqrt(
        np.asarray(predicted_var))
