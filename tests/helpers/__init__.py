"""Helpers shared by several test modules (fake sessions, DICOM data sets, a site folder for a whole run, a
throw-away SLURM cluster). Importable as `helpers` because pyproject.toml puts tests/ on pytest's `pythonpath`."""
