import os

import numpy as np
import pytest

# one shared on-disk cache of O2 tables per test session
os.environ.setdefault("BAYESFLUO_CACHE", os.path.join(os.path.dirname(__file__), "..",
                                                      ".pytest_cache", "bayesfluo"))


def _jax_compilation_cache() -> None:
    """JAX's persistent compilation cache in the same folder, as the command line keeps it
    (``bayesfluo.cli``): tests that build the same programs (the shipped guide's retrieval,
    NUTS on one model, several processes) compile each once per run; on 2 cores this
    took 14 % off the wall time of the retrieval, refinement and band-grid tests."""
    where = os.environ["BAYESFLUO_CACHE"]
    if where == "off":
        return
    os.makedirs(where, exist_ok=True)
    import jax
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_jax_compilation_cache()


@pytest.fixture(scope="session")
def model_o2a():
    from bayesfluo.physics import build_forward_model
    return build_forward_model("hyplant-fluo-o2a")


@pytest.fixture(scope="session")
def model_full():
    from bayesfluo.physics import build_forward_model
    return build_forward_model("hyplant-fluo")


@pytest.fixture(scope="session")
def model_desis():
    from bayesfluo.physics import build_forward_model
    return build_forward_model("desis")


@pytest.fixture(scope="session")
def model_flox():
    from bayesfluo.physics import build_forward_model
    return build_forward_model("flox")


def gaussian_convolve(wl, spectrum, centres, fwhm):
    """Independent reference: band values by direct Gaussian weighting (NumPy, float64)."""
    sigma = fwhm / (2 * np.sqrt(2 * np.log(2)))
    w = np.exp(-0.5 * ((wl[None, :] - centres[:, None]) / sigma) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    return w @ spectrum


# the shipped HyPlant O2-A guide and its retriever, shared by the retrieval tests
@pytest.fixture(scope="session")
def model_dir():
    from bayesfluo.shipped import resolve_model
    return resolve_model("hyplant-fluo-o2a")


@pytest.fixture(scope="session")
def guide(model_dir):
    from bayesfluo.inference.guide import load_guide
    return load_guide(model_dir)


@pytest.fixture(scope="session")
def retriever(guide, model_o2a):
    from bayesfluo.retrieval.api import Retriever
    return Retriever(guide, model_o2a)
