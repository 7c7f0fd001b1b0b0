"""The calibration diagnostics on a problem with an analytic posterior.

theta ~ N(0, 1), y | theta ~ N(theta, s^2): posterior N(y / (1 + s^2), s^2 / (1 + s^2)).
A correct sampler draws from it; a biased one shifts the mean by half a posterior sd; an
over-confident one shrinks the sd to 60 %. All runs are seeded; the stated false-failure
rate of each test is alpha = 1e-4 (binomial tails, Bonferroni over bins or levels).
"""

import numpy as np
import pytest

from bayesfluo.diagnostics.calibration import (
    DEFAULT_ALPHA,
    contraction,
    coverage,
    coverage_test,
    sbc_ranks,
    sbc_test,
    standardized_residuals,
)

N_SIM, N_DRAW, S = 2000, 99, 0.7


def _simulate(kind, seed=0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=N_SIM)
    y = theta + S * rng.normal(size=N_SIM)
    mean = y / (1 + S**2)
    sd = np.sqrt(S**2 / (1 + S**2))
    if kind == "biased":
        mean = mean + 0.5 * sd
    if kind == "overconfident":
        sd = 0.6 * sd
    draws = mean[:, None] + sd * rng.normal(size=(N_SIM, N_DRAW))
    return theta, draws


def test_correct_sampler_passes():
    theta, draws = _simulate("correct")
    res = sbc_test(sbc_ranks(theta, draws), N_DRAW)
    assert res.passed, res
    assert res.alpha == DEFAULT_ALPHA
    cov = coverage_test(coverage(theta, draws))
    assert all(c.passed for c in cov), cov
    assert next(c for c in cov if c.level == 0.9).observed == pytest.approx(0.9, abs=0.03)


@pytest.mark.parametrize("kind", ["biased", "overconfident"])
def test_bad_samplers_fail(kind):
    theta, draws = _simulate(kind)
    assert not sbc_test(sbc_ranks(theta, draws), N_DRAW).passed
    assert not all(c.passed for c in coverage_test(coverage(theta, draws)))


def test_false_failure_rate_is_at_most_alpha_at_a_looser_alpha():
    """At alpha = 0.2 the correct sampler should fail in at most ~20 % of 60 seeded runs
    (binomial: P(>= 21 failures | p = 0.2) < 5e-3)."""
    fails = 0
    for seed in range(60):
        theta, draws = _simulate("correct", seed=seed + 100)
        fails += not sbc_test(sbc_ranks(theta, draws), N_DRAW, alpha=0.2).passed
    assert fails <= 20


def test_helpers():
    assert np.allclose(contraction([2.0, 1.0], [1.0, 1.0]), [2.0, 1.0])
    z = standardized_residuals([1.0, 3.0], [0.0, 1.0], [1.0, 4.0])
    assert np.allclose(z, [1.0, 1.0])
    with pytest.raises(ValueError, match="divisor"):
        sbc_test(np.zeros(10, int), 100)  # 101 is prime
    with pytest.raises(ValueError, match="n_sim"):
        sbc_ranks(np.zeros(3), np.zeros((4, 5)))
