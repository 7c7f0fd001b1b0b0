"""The device JAX computes on, and the chunk size that suits it.

``bayesfluo retrieve`` and ``bayesfluo train`` print :func:`device_line` before they
start; :class:`bayesfluo.retrieval.chunk.RetrieveOptions` takes its default chunk size from
:func:`default_chunk_pixels`. JAX picks its default backend itself: a GPU when a CUDA
``jaxlib`` plugin is installed (``pip install "bayesfluo[cuda]"``) and sees one, else the
CPU (``docs/gpu.md``).
"""

from __future__ import annotations

import os

__all__ = ["CPU_CHUNK_PIXELS", "ACCELERATOR_CHUNK_FACTOR", "default_chunk_pixels",
           "device_line", "device_summary"]

#: Pixels per chunk on a CPU: small chunks keep the encoder's activations in the CPU's
#: caches (on 2 cores, 8,192 pixels ran 1.2-1.6x faster than 32,768 or 65,536)
CPU_CHUNK_PIXELS = 8192

#: A GPU (or another accelerator) gets chunks this many times larger: it needs many
#: pixels at once to fill it, and has the memory for them. Chosen, not yet measured.
ACCELERATOR_CHUNK_FACTOR = 8


def _cpu_cores() -> int:
    """CPU cores this process may run on (its affinity, where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def device_summary() -> dict:
    """JAX's default backend and its devices.

    Returns
    -------
    dict
        ``backend`` (``"cpu"``, ``"gpu"``, ``"tpu"``), ``device_kind`` (e.g. ``"cpu"``,
        ``"NVIDIA H100 80GB HBM3"``), ``count`` (devices of that backend) and
        ``cpu_cores`` (CPU cores this process may use).
    """
    import jax

    backend = jax.default_backend()
    devices = jax.devices(backend)
    return {"backend": backend, "device_kind": devices[0].device_kind,
            "count": len(devices), "cpu_cores": _cpu_cores()}


def device_line(summary: dict | None = None) -> str:
    """One line naming the device: ``device: cpu (2 cores)``, ``device: gpu NVIDIA
    H100 80GB HBM3`` (``x 4`` appended for several).

    Parameters
    ----------
    summary : dict, optional
        A :func:`device_summary` (default: this process's).
    """
    s = summary if summary is not None else device_summary()
    if s["backend"] == "cpu":
        return f"device: cpu ({s['cpu_cores']} cores)"
    many = f" x {s['count']}" if s["count"] > 1 else ""
    return f"device: {s['backend']} {s['device_kind']}{many}"


def default_chunk_pixels(backend: str | None = None) -> int:
    """The default pixels per retrieval chunk on ``backend`` (default: JAX's default
    backend): :data:`CPU_CHUNK_PIXELS` on a CPU, :data:`ACCELERATOR_CHUNK_FACTOR` times
    that on a GPU or TPU."""
    if backend is None:
        import jax

        backend = jax.default_backend()
    return CPU_CHUNK_PIXELS if backend == "cpu" else CPU_CHUNK_PIXELS * ACCELERATOR_CHUNK_FACTOR
