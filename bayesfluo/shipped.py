"""The registry of trained guides shipped with bayesfluo.

The model directories are package data (``bayesfluo/data/models/NAME/``: ``model.json``,
``weights.eqx``, the model card, the training history and the ``train.toml`` that
reproduces them), found through :mod:`importlib.resources`, so a plain ``pip install``
carries them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["models_dir", "resolve_model", "shipped_models"]


def models_dir() -> Path:
    """The folder that holds the shipped model directories."""
    return Path(str(resources.files("bayesfluo") / "data" / "models"))


def shipped_models() -> list[str]:
    """Names of the shipped models."""
    d = models_dir()
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if (p / "model.json").is_file())


def resolve_model(name_or_path: str | Path) -> Path:
    """A model directory from a path or the name of a shipped model."""
    p = Path(name_or_path)
    if (p / "model.json").is_file():
        return p
    shipped = models_dir() / str(name_or_path)
    if (shipped / "model.json").is_file():
        return shipped
    known = ", ".join(shipped_models()) or "none found"
    raise FileNotFoundError(f"no model at {name_or_path!r} (not a directory with model.json, "
                            f"nor a shipped model; shipped: {known})")
