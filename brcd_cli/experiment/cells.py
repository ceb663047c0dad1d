"""What the grid's rows are and which files a finished cell leaves: shared by the grid that writes them and the report that reads them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_write

CELL_FILE = "cell.json"
CODES_FILE = "codes.npz"
STATE_FILE = "experiment.json"


def save_codes(path: Path, **arrays: np.ndarray) -> None:
    """Store the named code arrays of a cell or teacher as one .npz, atomically."""
    with atomic_write(path) as fh:
        np.savez(fh, **arrays)


def load_codes(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
