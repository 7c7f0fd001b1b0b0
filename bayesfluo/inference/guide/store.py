"""A trained guide and its model directory (``weights.eqx`` and ``model.json``)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from bayesfluo._version import __version__
from bayesfluo.inference.guide.encoder import Encoder, new_encoder
from bayesfluo.io.atomic import atomic_path
from bayesfluo.model import ModelConfig, SifModel

__all__ = ["AmortizedGuide", "load_guide", "FORMAT"]

#: Format tag of a model directory's ``model.json``
FORMAT = "bayesfluo-guide-1"


@dataclass
class AmortizedGuide:
    """A trained encoder with everything needed to apply it: the instrument, the model
    configuration, the input normalisation and the training ranges of the ancillary
    inputs (outside them the input is flagged as out of distribution).

    Attributes
    ----------
    encoder : Encoder
    instrument : str
    config : ModelConfig
    patch_size : int
        Side of the square patches (pixels) that share an atmosphere.
    feature_mean, feature_sd : numpy.ndarray
        Per-feature normalisation (bands, then
        :data:`~bayesfluo.inference.guide.features.ANCILLARY`).
    ranges : dict
        Training range of each ancillary input, name -> (low, high).
    hyper : dict
        Encoder hyper-parameters (``width``, ``depth``).
    info : dict
        Training record (steps, wall time, seed, final loss...), for the model card.
    model : SifModel
        The model whose posterior the guide approximates: the instrument's forward model
        with ``config`` and the built-in atmosphere (made from them when not given).
    """

    encoder: Encoder
    instrument: str
    config: ModelConfig
    patch_size: int
    feature_mean: np.ndarray
    feature_sd: np.ndarray
    ranges: dict
    hyper: dict
    info: dict
    model: SifModel | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.model is None:
            self.model = SifModel.for_instrument(self.instrument, self.config)
        if self.model.instrument != self.instrument or self.model.cfg != self.config:
            raise ValueError(f"the guide's model ({self.model}) is not that of its "
                             f"instrument {self.instrument!r} and configuration")

    @property
    def has_red(self) -> bool:
        """Whether the window holds the O2-B band (a red SIF peak is a latent)."""
        return self.model.has_red

    @property
    def n_pixels(self) -> int:
        """Pixels per patch."""
        return self.patch_size**2

    def save(self, path: str | Path) -> Path:
        """Write ``weights.eqx`` and ``model.json`` into the directory ``path`` (each
        written to a temporary name and renamed)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = dict(format=FORMAT, bayesfluo_version=__version__,
                    instrument=self.instrument, has_red=self.has_red,
                    patch_size=self.patch_size, hyper=self.hyper,
                    n_features=int(self.feature_mean.size),
                    config=self.config.to_dict(),
                    feature_mean=[float(v) for v in self.feature_mean],
                    feature_sd=[float(v) for v in self.feature_sd],
                    ranges={k: [float(a), float(b)] for k, (a, b) in self.ranges.items()},
                    info=self.info)
        with atomic_path(path / "weights.eqx") as tmp:
            eqx.tree_serialise_leaves(tmp, self.encoder)
        with atomic_path(path / "model.json") as tmp:
            Path(tmp).write_text(json.dumps(meta, indent=1))
        return path


def load_guide(path: str | Path) -> AmortizedGuide:
    """Read a guide saved by :meth:`AmortizedGuide.save` (a model directory).

    Raises
    ------
    FileNotFoundError
        If ``path`` has no ``model.json``.
    ValueError
        If ``model.json`` or ``weights.eqx`` cannot be read as a guide.
    """
    path = Path(path)
    meta_file = path / "model.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a bayesfluo model directory (no model.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_file} is not valid JSON: {e}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_file}: unknown model format {meta.get('format')!r}")
    cfg = ModelConfig.from_dict(meta["config"])
    model = SifModel.for_instrument(meta["instrument"], cfg)
    if bool(meta["has_red"]) != model.has_red:
        raise ValueError(f"{meta_file}: has_red={meta['has_red']} does not match the "
                         f"{meta['instrument']} window")
    skeleton = new_encoder(meta["n_features"], model, meta["hyper"]["width"],
                           meta["hyper"]["depth"], jax.random.PRNGKey(0))
    try:
        enc = eqx.tree_deserialise_leaves(path / "weights.eqx", skeleton)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"{path / 'weights.eqx'} could not be read as this model's "
                         f"weights: {e}") from None
    info = meta.get("info", {})
    if "pretrain_steps" in info and "spectroscopy" not in info:
        warnings.warn(f"{path}: trained before bayesfluo's O2 table held A-band line mixing "
                      "and collision-induced absorption; the model now has them (the "
                      "guide's spectra differ by up to a few percent in the O2-A band): "
                      "retrain it with `bayesfluo train`", UserWarning, stacklevel=2)
    return AmortizedGuide(enc, meta["instrument"], cfg, int(meta["patch_size"]),
                          np.asarray(meta["feature_mean"], np.float32),
                          np.asarray(meta["feature_sd"], np.float32),
                          {k: tuple(v) for k, v in meta["ranges"].items()}, meta["hyper"],
                          info, model)
