"""External atmospheres: the round trip of the built-in atmosphere through each table
format, and what the table perturbations buy when a table is wrong.

    python benchmarks/external_atmosphere.py [STEPS]

Prints the largest relative radiance difference of built-in -> table file -> read back ->
radiance (exact fine-grid route and band-operator route) for netCDF, named-column text and
T18 text, then the F760 RMSE and bias (mW m-2 sr-1 nm-1) of a MAP fit (L-BFGS, STEPS steps,
default 800) of 16 seeded HyPlant FLUO O2-A pixels through a table computed for surface
pressure +1.5 % and AOT 0.20 (truth 0.12), with the perturbations fixed at 1, free, and
through the true table.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from bayesfluo.io.tables import export_atmosphere, external_atmosphere, read_table, write_table
from bayesfluo.model.table_prior import ExternalModel, PerturbationPrior
from bayesfluo.physics.atmosphere import AtmosphereParams
from bayesfluo.physics.external import band_operator_external, radiance_exact_external
from bayesfluo.physics.forward import (
    Geometry,
    radiance,
    radiance_exact,
    radiance_from_operator,
    standard_pressure_hpa,
)
from bayesfluo.physics.surface import SifParams, sif_spectrum

GEOM = Geometry(jnp.float32(35.0), jnp.float32(8.0), jnp.float32(40.0), jnp.float32(100.0),
                jnp.float32(700.0), jnp.float32(0.97))


def _atm(pressure_factor=1.0, aot=0.12):
    p0 = float(standard_pressure_hpa(100.0))
    return AtmosphereParams(jnp.float32(p0 * pressure_factor), jnp.float32(aot),
                            jnp.float32(1.3), jnp.float32(1.5))


def perturbation_experiment(fm, steps: int, seed: int = 3) -> dict:
    import optax
    from jax.flatten_util import ravel_pytree
    from numpyro.infer import init_to_median
    from numpyro.infer.util import initialize_model

    from bayesfluo.instruments import get_instrument
    from bayesfluo.model import ModelConfig, Patch, SifModel
    from bayesfluo.physics.sensor import add_noise
    from bayesfluo.scene.simulate import random_surface, surface_reflectance

    surf = random_surface((4, 4), np.random.default_rng(seed))
    n = surf.cover.size
    r_fine = surface_reflectance(surf._replace(sif=None), fm.fine_nm)
    sif = SifParams(jnp.zeros(n), *(jnp.asarray(a, jnp.float32) for a in surf.sif[1:]))
    f_fine = jax.vmap(lambda s: sif_spectrum(fm.fine_nm, s))(sif)
    truth = np.asarray(sif_spectrum(760.0, sif))
    rr = surface_reflectance(surf._replace(sif=None), np.array([670.0, 800.0]))
    ndvi = jnp.asarray((rr[:, 1] - rr[:, 0]) / (rr[:, 1] + rr[:, 0]), jnp.float32)
    clean = jax.vmap(lambda r, f: radiance_exact(fm, r, f, _atm(), GEOM))(r_fine, f_fine)
    a, b = get_instrument(fm.instrument).noise_coefficients()
    obs = add_noise(jax.random.PRNGKey(seed), clean, a, b)
    patch = Patch(radiance=obs, mask=jnp.ones(n), ndvi=ndvi, geometry=GEOM, noise_a=a,
                  noise_b=b, surface_pressure0=jnp.float32(1000.0))
    cfg = ModelConfig(free=())
    wrong = external_atmosphere(fm, export_atmosphere(fm, _atm(1.015, 0.20), GEOM))
    right = external_atmosphere(fm, export_atmosphere(fm, _atm(), GEOM))

    def fit(ext, prior):
        model = SifModel(fm, cfg, table=ExternalModel(ext, prior))
        info, potential, post, _ = initialize_model(
            jax.random.PRNGKey(0), model.program, model_args=(patch,),
            init_strategy=init_to_median)
        x0, unravel = ravel_pytree(info.z)
        f = lambda x: potential(unravel(x))  # noqa: E731
        opt = optax.lbfgs()
        vg = optax.value_and_grad_from_state(f)

        def step(carry, _):
            x, st = carry
            v, g = vg(x, state=st)
            u, st = opt.update(g, st, x, value=v, grad=g, value_fn=f)
            return (optax.apply_updates(x, u), st), v

        (x, _), _ = jax.jit(lambda x: jax.lax.scan(step, (x, opt.init(x)), None,
                                                   length=steps))(x0)
        est = np.asarray(post(unravel(x))["f760"])
        return float(np.sqrt(np.mean((est - truth) ** 2))), float(np.mean(est - truth))

    out = {}
    for name, ext, prior in (("fixed", wrong, PerturbationPrior(free=())),
                             ("free", wrong, PerturbationPrior()),
                             ("true_table", right, PerturbationPrior(free=()))):
        out[name], out[f"bias_{name}"] = fit(ext, prior)
    return out


def main() -> None:
    from bayesfluo.physics import build_forward_model

    fm = build_forward_model("hyplant-fluo-o2a")
    table = export_atmosphere(fm, _atm(), GEOM)
    coeffs = jnp.linspace(0.05, 0.45, fm.n_basis).astype(jnp.float32)
    sif = SifParams(jnp.float32(0.0), jnp.float32(2.0))
    r_fine, f_fine = fm.basis_fine @ coeffs, sif_spectrum(fm.fine_nm, sif)
    _exact = eqx.filter_jit(radiance_exact)
    _fast = eqx.filter_jit(radiance)
    _exact_ext = eqx.filter_jit(radiance_exact_external)
    _fast_ext = eqx.filter_jit(lambda fm, ext, c, s: radiance_from_operator(
        fm, band_operator_external(fm, ext), c, s))
    ref_exact = _exact(fm, r_fine, f_fine, _atm(), GEOM)
    ref_fast = _fast(fm, coeffs, sif, _atm(), GEOM)
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in (("t.nc", {}), ("t.txt", {"layout": "named"}),
                         ("t.atm", {"layout": "t18"})):
            write_table(table, Path(tmp) / name, **kw)
            ext = external_atmosphere(fm, read_table(Path(tmp) / name))
            d_exact = float(jnp.max(jnp.abs(_exact_ext(fm, ext, r_fine, f_fine) / ref_exact - 1)))
            d_fast = float(jnp.max(jnp.abs(_fast_ext(fm, ext, coeffs, sif) / ref_fast - 1)))
            print(f"round trip {name}: max relative difference exact route {d_exact:.2e}, "
                  f"band-operator route {d_fast:.2e}")
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 800
    print(f"F760 RMSE (mW m-2 sr-1 nm-1), MAP with {steps} L-BFGS steps:",
          perturbation_experiment(fm, steps=steps))


if __name__ == "__main__":
    main()
