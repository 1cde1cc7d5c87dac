"""Send a stage's messages to its Snakemake log file (pseudonyms and relative paths only)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def log_to(path: str | Path) -> Iterator[logging.Logger]:
    """Route `logging`, stdout and stderr of a workflow script into `path` for the duration of the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handler = logging.StreamHandler(handle)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
            try:
                yield logging.getLogger("bidsafe")
            except Exception as exc:
                # One clear line in the log; the traceback is not printed because frames may hold values.
                logging.getLogger("bidsafe").error("%s: %s", type(exc).__name__, exc)
                raise
            finally:
                root.removeHandler(handler)
                handler.flush()
        sys.stderr.flush()
