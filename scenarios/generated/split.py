"""The tuning / held-out split, by seed and by configuration cell.

A *cell* is (family, activation, optimizer).  About a fifth of the cells, picked by a
fixed hash, are *held-out cells*: their runs appear only in the held-out part.  The other
runs are split by seed (seed % 5 in {0, 1, 2} -> tuning, else held-out).  So the held-out
part holds unseen seeds of seen cells and whole cells the tuning part never shows.
"""

from __future__ import annotations

import hashlib

from gradscope_scenarios.generated.space import Config, draw

PARTS = ("tuning", "heldout")
HELDOUT_CELL_FRACTION = 0.2
DEFAULT_SIZE = 320


def cell(config: Config) -> tuple[str, str, str]:
    """The configuration cell of a run."""
    return (config.family, config.activation, config.optimizer)


def heldout_cell(key: tuple[str, str, str]) -> bool:
    """Whether a whole cell is reserved for the held-out part (a fixed hash, no RNG)."""
    digest = hashlib.sha256("/".join(key).encode()).digest()
    return digest[0] < 256 * HELDOUT_CELL_FRACTION


def part_of(config: Config) -> str:
    """ "tuning" or "heldout"."""
    if heldout_cell(cell(config)):
        return "heldout"
    return "tuning" if config.seed % 5 in (0, 1, 2) else "heldout"


def seeds(part: str, size: int = DEFAULT_SIZE) -> list[int]:
    """The first ``size`` seeds whose configuration falls in ``part``."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    out: list[int] = []
    seed = 0
    while len(out) < size:
        if part_of(draw(seed)) == part:
            out.append(seed)
        seed += 1
    return out
