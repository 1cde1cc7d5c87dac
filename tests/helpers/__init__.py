"""Helpers shared by several test modules (fake sessions, DICOM data sets, a synthetic release project and a
published version of it, a demo inbox, a site folder for a whole run, a throw-away SLURM cluster). Importable as
`helpers` because pyproject.toml puts tests/ on pytest's `pythonpath`; test modules import only from here, never
from one another. Fixtures several files share are in tests/conftest.py."""
