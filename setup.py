"""Build hook: the wheel carries the workflow and the shipped configuration inside the package.

`Snakefile`, `config/`, `workflow/`, `envs/` and `profiles/` stay at the top of the repository (one copy in git,
where users and docs find them). A regular build copies them into `bidsafe/_data/` of the wheel, laid out the
same way, so `bidsafe.resources` finds them after `pip install bidsafe-*.whl` and `bidsafe run` can run the packaged
Snakefile (its relative includes, scripts and `../../envs/` paths work unchanged). An editable install skips
the copy: it reads them from the checkout. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = ("Snakefile", "config", "workflow", "envs", "profiles")
PACKAGED = Path("bidsafe") / "_data"  # keep in step with bidsafe.resources
_IGNORE = shutil.ignore_patterns("__pycache__", "*.py[cod]", ".snakemake")


class BuildPyWithWorkflow(build_py):
    """build_py, then the repository's workflow files under bidsafe/_data/ in the build folder."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / PACKAGED
        # A fresh copy every build: a file deleted from the repository must not linger in the next wheel.
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name in SHIPPED:
            source = HERE / name
            if source.is_dir():
                shutil.copytree(source, target / name, ignore=_IGNORE)
            elif source.is_file():
                shutil.copy2(source, target / name)
            else:
                raise FileNotFoundError(f"{source}: shipped with the package but missing (is MANIFEST.in complete?)")


setup(cmdclass={"build_py": BuildPyWithWorkflow})
