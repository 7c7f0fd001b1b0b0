"""The Cramer-Rao bound of the forward model against the independent estimate of
SCIENCE.md section 5 (a simpler model: flat sun, cubic reflectance, Gaussian SIF, one O2
scale, a spectral shift). Agreement within 30 % is asked: the two models differ in their
solar spectrum, atmosphere and reflectance basis."""

import numpy as np
import pytest

from bayesfluo.diagnostics import cramer_rao_f760


@pytest.mark.parametrize("altitude, snr, known, free", [
    (600.0, 150.0, 0.20, 0.76),
    (600.0, 300.0, 0.10, 0.38),
    (1500.0, 150.0, 0.25, 0.95),
])
def test_hyplant_bound_matches_science_estimate(model_o2a, altitude, snr, known, free):
    crb = cramer_rao_f760("hyplant-fluo-o2a", altitude_m=altitude, snr=snr, model=model_o2a)
    assert crb["atmosphere known"] == pytest.approx(known, rel=0.3)
    assert crb["atmosphere free"] == pytest.approx(free, rel=0.3)
    # freeing more of the atmosphere can only loosen the bound
    assert crb["atmosphere and aerosol free"] >= crb["atmosphere free"] >= \
        crb["atmosphere known"]


def test_desis_bound_is_an_order_of_magnitude_wider(model_desis, model_o2a):
    desis = cramer_rao_f760("desis", model=model_desis)
    hyplant = cramer_rao_f760("hyplant-fluo-o2a", model=model_o2a)
    assert desis["atmosphere known"] == pytest.approx(4.0, rel=0.3)
    assert desis["atmosphere known"] > 10 * hyplant["atmosphere known"]


def test_bound_scales_as_one_over_snr(model_o2a):
    a = cramer_rao_f760(snr=100.0, model=model_o2a)["atmosphere known"]
    b = cramer_rao_f760(snr=400.0, model=model_o2a)["atmosphere known"]
    assert a / b == pytest.approx(4.0, rel=1e-3)
    assert np.isfinite(a)


def test_unknown_latent_is_named(model_o2a):
    with pytest.raises(ValueError, match="unknown latent"):
        cramer_rao_f760(cases={"x": ("reflectance", "sif_far_red", "humidity")},
                        model=model_o2a)
