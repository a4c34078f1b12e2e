"""Where the project is: the folder that the notebooks' relative paths belong to.

Every path in params.yaml and in a notebook's parameters (`results/debate`, `models/rsft`, ...) is
relative to the project root, the folder with `dvc.yaml`, where DVC runs each stage. JupyterLab
starts a notebook's kernel in the notebook's own folder (`notebooks/`) instead, so each notebook's
first code cell calls `enter_root()`: a notebook reads and writes the same files whether Papermill
started it at the root or a person opened it in JupyterLab.
"""

from __future__ import annotations

import os
from pathlib import Path

MARKER = "dvc.yaml"  # the pipeline whose paths these are


def find_root(start: str | Path = ".") -> Path | None:
    """The nearest folder at or above `start` that holds dvc.yaml; None outside a project."""
    start = Path(start).resolve()
    return next((folder for folder in (start, *start.parents) if (folder / MARKER).is_file()), None)


def enter_root() -> Path:
    """Make the project root the working directory and return it.

    Outside a project (a notebook copied elsewhere and given absolute paths) the working directory
    stays as it is.
    """
    root = find_root()
    if root is None:
        return Path.cwd()
    os.chdir(root)
    return root
