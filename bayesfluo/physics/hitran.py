"""Reading HITRAN line lists (the 100-character 1996 and 160-character 2004 layouts).

Both layouts begin with the same fixed-width fields, which are all bayesfluo needs:

=========  =====  ==========================================================
field      width  meaning
=========  =====  ==========================================================
mol        2      HITRAN molecule number (7 = O2)
iso        1      isotopologue number (1 = 16O2, 2 = 16O18O, 3 = 16O17O)
nu         12     vacuum wavenumber, cm-1
sw         10     line intensity at 296 K, cm-1 / (molecule cm-2)
a          10     Einstein A coefficient, s-1
gamma_air  5      air-broadened Lorentz HWHM at 296 K, 1 atm, cm-1 atm-1
gamma_self 5      self-broadened HWHM, cm-1 atm-1
elower     10     lower-state energy E'', cm-1
n_air      4      temperature exponent of gamma_air
delta_air  8      air pressure shift, cm-1 atm-1
=========  =====  ==========================================================

The rest of a line (quantum numbers, uncertainty codes, references) differs between the
layouts and is ignored. A line whose length is neither 100 nor 160 characters is an error.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["LineList", "parse_hitran", "read_hitran", "load_o2_lines", "ISOTOPOLOGUE_MASS_AMU"]

# field name -> (start, end) character columns (0-based, end exclusive)
_FIELDS = {
    "molecule": (0, 2), "isotopologue": (2, 3), "wavenumber": (3, 15), "intensity": (15, 25),
    "einstein_a": (25, 35), "gamma_air": (35, 40), "gamma_self": (40, 45),
    "elower": (45, 55), "n_air": (55, 59), "delta_air": (59, 67),
}
_LAYOUTS = {100: "HITRAN-96", 160: "HITRAN-2004"}

# O2 isotopologue masses (amu) and natural abundances (HITRAN)
ISOTOPOLOGUE_MASS_AMU = {1: 31.98983, 2: 33.994076, 3: 32.994045}


class LineList(NamedTuple):
    """A line list as NumPy arrays (one entry per line); see the module docstring for units."""

    molecule: np.ndarray
    isotopologue: np.ndarray
    wavenumber: np.ndarray
    intensity: np.ndarray
    einstein_a: np.ndarray
    gamma_air: np.ndarray
    gamma_self: np.ndarray
    elower: np.ndarray
    n_air: np.ndarray
    delta_air: np.ndarray
    layout: np.ndarray  # record length, 100 or 160

    def select(self, mask: np.ndarray) -> LineList:
        """The lines where ``mask`` is true."""
        return LineList(*(a[mask] for a in self))

    def in_range(self, wavenumber_min: float, wavenumber_max: float) -> LineList:
        """The lines with wavenumber in [min, max] (cm-1)."""
        return self.select((self.wavenumber >= wavenumber_min)
                           & (self.wavenumber <= wavenumber_max))


def _num(text: str, name: str, lineno: int) -> float:
    s = text.strip()
    try:
        return float(s)
    except ValueError:
        raise ValueError(f"line {lineno}: field {name} is not a number: {text!r}") from None


def parse_hitran(text: str) -> LineList:
    """Parse the text of a HITRAN .par file in either layout (lines may mix them).

    Raises
    ------
    ValueError
        For a record whose length is not 100 or 160 characters, or a field that is not a
        number, naming the line.
    """
    cols: dict[str, list[float]] = {k: [] for k in _FIELDS}
    layout = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        if len(line) not in _LAYOUTS:
            raise ValueError(
                f"line {lineno}: {len(line)} characters; a HITRAN record has 100 (HITRAN-96) "
                "or 160 (HITRAN-2004)")
        for name, (a, b) in _FIELDS.items():
            cols[name].append(_num(line[a:b], name, lineno))
        layout.append(len(line))
    if not layout:
        raise ValueError("no HITRAN records found")
    out = {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}
    out["molecule"] = out["molecule"].astype(np.int32)
    out["isotopologue"] = out["isotopologue"].astype(np.int32)
    order = np.argsort(out["wavenumber"], kind="stable")
    lines = LineList(**out, layout=np.asarray(layout, dtype=np.int32))
    return LineList(*(a[order] for a in lines))


def read_hitran(path: str | Path) -> LineList:
    """Parse a HITRAN .par file from disk."""
    return parse_hitran(Path(path).read_text(encoding="ascii"))


@functools.cache
def load_o2_lines() -> LineList:
    """The O2 line list shipped with bayesfluo (HITRAN 2008 as used by DISAMAR)."""
    ref = resources.files("bayesfluo.data").joinpath("o2", "o2_hitran2008_disamar.par")
    return parse_hitran(ref.read_text(encoding="ascii"))
