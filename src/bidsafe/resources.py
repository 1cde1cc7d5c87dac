"""Where the files bidsafe ships beside its code are: the one place that knows.

The workflow (`Snakefile`, `workflow/`, `envs/`) and the shipped configuration (`config/`: rule set, descriptor
vocabulary, dcm2bids mapping, sidecar allow-list, demo config) live once in git, at the top of the repository
where users and docs find them. A wheel carries a copy of them inside the package, laid out the same way
under `bidsafe/_data/` (written by the build hook in setup.py), so an installed bidsafe needs no checkout. An
editable install or `PYTHONPATH=src` reads them from the checkout itself. Files that belong to the package
proper (the PS3.15 table under `bidsafe/data/`) are found beside the code either way.

Every lookup goes through `path()` or `package_file()`; nothing else counts parent folders of `__file__`.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# The copy a wheel carries (absent in a checkout: the build writes it into the build folder, never into src/).
_PACKAGED = _PACKAGE / "_data"
# src/bidsafe/resources.py -> the repository root, when running from a checkout.
_CHECKOUT = _PACKAGE.parents[1]
# What marks a folder laid out like the repository.
_MARKER = "Snakefile"


def root() -> Path:
    """The folder holding `Snakefile`, `config/`, `workflow/` and `envs/`: the wheel's copy when installed,
    else the checkout this code runs from. Never raises (module constants call it at import time): where
    neither is complete, the packaged location is returned and the reader of a file names what is missing."""
    for candidate in (_PACKAGED, _CHECKOUT):
        if (candidate / _MARKER).is_file():
            return candidate
    return _PACKAGED


def path(name: str) -> Path:
    """A shipped file by its path in the repository, e.g. `path("config/deid/basic-mr.yaml")`."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"a shipped file is named by its path inside the repository, not {name!r}")
    return root() / relative


def snakefile() -> Path:
    """The workflow `bidsafe run` runs (its folder is the workflow's base directory)."""
    return path(_MARKER)


def package_file(name: str) -> Path:
    """A data file of the package itself, e.g. `package_file("data/ps315/table_e1_1.json")`."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"a package file is named by its path inside the package, not {name!r}")
    return _PACKAGE / relative


__all__ = ["package_file", "path", "root", "snakefile"]
