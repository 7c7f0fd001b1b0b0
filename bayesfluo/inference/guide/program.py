"""The guide as a NumPyro program: the variational family of
:meth:`bayesfluo.model.SifModel.batch_program`, for stochastic variational inference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import eqx_module

from bayesfluo.inference.guide.encoder import Encoder
from bayesfluo.model import SIF_KNEE, Patch, SifModel, knee_softplus

__all__ = ["guide_program"]


def guide_program(encoder: Encoder, model: SifModel, patches: Patch, features: jax.Array,
                  subsample_size: int | None = None, operator=None) -> None:
    """NumPyro guide of ``model.batch_program(patches, subsample_size)``: the same latent
    sites, drawn from the encoder's Gaussian (see :mod:`bayesfluo.inference.guide`).

    Parameters
    ----------
    encoder : Encoder
        Its weights are NumPyro parameters (``encoder$params``, through
        :func:`numpyro.contrib.module.eqx_module`).
    model : SifModel
        The guide's model (which latents are free, their transforms).
    patches : Patch
        A batch of N patches (leading patch dimension); ``mask`` and ``ndvi`` are read.
    features : array (N, P, F)
        The encoder's inputs of the patches (:func:`~bayesfluo.inference.guide.pixel_features`).
    subsample_size : int, optional
        Patches per minibatch (as the model's ``patch`` plate).
    operator : optional
        Ignored: accepted so that the guide takes the model program's arguments.
    """
    net = eqx_module("encoder", encoder)
    n_patch, n_pix = patches.ndvi.shape
    k = model.fm.n_basis
    with numpyro.plate("patch", n_patch, subsample_size=subsample_size, dim=-2) as idx:
        feats, mask = features[idx], patches.mask[idx]
        q = jax.vmap(net)(feats, mask)
        free = model.free
        if free:
            zs = numpyro.sample("shared_u", dist.MultivariateNormal(
                q.shared_loc[:, None], scale_tril=q.shared_tril[:, None]),
                infer={"is_auxiliary": True})                       # (b, 1, S)
            for i, n in enumerate(free):
                numpyro.sample(f"{n}_z", dist.Delta(zs[..., i]))
            shift = jnp.einsum("bpds,bs->bpd", q.coupling, zs[:, 0] - q.shared_loc)
        else:
            shift = 0.0
        with numpyro.plate("pixel", n_pix, dim=-1):
            u = numpyro.sample("local_u", dist.MultivariateNormal(
                q.local_loc + shift, scale_tril=q.local_tril), infer={"is_auxiliary": True})
            numpyro.sample("reflectance_z", dist.Delta(u[..., :k], event_dim=1))
            for j, name in enumerate(model.local_names()[k:]):
                v = u[..., k + j]
                # density of the constrained value: q(v) / |d raw / d v|
                log_jac = jax.nn.log_sigmoid(v / SIF_KNEE)
                numpyro.sample(name, dist.Delta(knee_softplus(v), log_density=-log_jac))
