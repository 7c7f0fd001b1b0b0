"""The trained guides shipped with bayesfluo (``models/`` in the repository)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODELS_DIR", "resolve_model", "shipped_models"]

#: Where the shipped model directories live (beside the package in a source checkout)
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def shipped_models() -> list[str]:
    """Names of the shipped models."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "model.json").is_file())


def resolve_model(name_or_path: str | Path) -> Path:
    """A model directory from a path or the name of a shipped model."""
    p = Path(name_or_path)
    if (p / "model.json").is_file():
        return p
    if (MODELS_DIR / str(name_or_path) / "model.json").is_file():
        return MODELS_DIR / str(name_or_path)
    known = ", ".join(shipped_models()) or "none found"
    raise FileNotFoundError(f"no model at {name_or_path!r} (not a directory with model.json, "
                            f"nor a shipped model; shipped: {known})")
