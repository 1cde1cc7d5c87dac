#!/usr/bin/env bash
# Run by Snakemake (`--sdm conda`) once, inside the new env: bidsafe itself, WITHOUT its dependencies (the env
# pins exactly the packages its rules import; bidsafe's own list would bring Snakemake and every other stage's).
# BIDSAFE_SOURCE: a bidsafe checkout (installed editable: the env runs the checkout's code, as the venv does) or
# a bidsafe wheel (`make wheel`). Run from a checkout, the workflow sets it to that checkout (common.smk).
# The same file for every env (tests/unit/test_envs.py).
set -euo pipefail
: "${BIDSAFE_SOURCE:?set BIDSAFE_SOURCE to the bidsafe checkout or wheel this workflow comes from}"
if [ -d "$BIDSAFE_SOURCE" ]; then
  python -m pip install --quiet --no-deps --no-cache-dir --editable "$BIDSAFE_SOURCE"
else
  python -m pip install --quiet --no-deps --no-cache-dir "$BIDSAFE_SOURCE"
fi
python -c "import bidsafe"
