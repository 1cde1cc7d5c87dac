# Two commands for a newcomer: `make demo` and `make test`. Both go through `make setup`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bidsafe-installed
CORES ?= all
DEMO_DIR ?= demo

.PHONY: setup demo test lint clean-demo node-validator config-docs wheel

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/bidsafe --version
	$(BIN)/snakemake --version
	touch $(STAMP)

demo: setup $(DEMO_DIR)/.inbox-written
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES)
	@echo
	@echo "Release (BIDS, validated, manifested): $(CURDIR)/$(DEMO_DIR)/release/latest"
	@echo "Report (per-session status, gates, QC, deface pictures): $(CURDIR)/$(DEMO_DIR)/work/report/bidsafe-report.html"

# Demo scanner exports with fake personal data, plus the research team's consent registry and demographics.
$(DEMO_DIR)/.inbox-written: | setup
	$(BIN)/bidsafe demo-data $(DEMO_DIR)/inbox --subjects 4 --sessions 2 --seed 1 --force \
		--consent $(DEMO_DIR)/consent.tsv --demographics $(DEMO_DIR)/demographics.tsv
	touch $@

# The alternative validator backend (npm `bids-validator`, run with node), installed where npm exists so its
# tests run; without npm those tests skip with a message.
NODE_VALIDATOR := $(VENV)/node/node_modules/.bin/bids-validator

node-validator:
	@if command -v npm >/dev/null 2>&1; then \
		test -x $(NODE_VALIDATOR) || npm install --silent --no-audit --no-fund --prefix $(VENV)/node bids-validator@1.15.0; \
	else echo "npm not found: the node validator backend's tests will be skipped"; fi

test: setup node-validator
	$(BIN)/bidsafe check-rules config/deid/
	PATH=$(CURDIR)/$(BIN):$(CURDIR)/$(VENV)/node/node_modules/.bin:$$PATH $(BIN)/python -m pytest -q

# Every check CI runs before the tests (.ci/run); each fails on any finding. `ruff format` is not among them:
# most of the code base predates it. mypy's settings (strict, which files) are in pyproject.toml.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/snakefmt --check Snakefile workflow/rules/*.smk
	# a stand-in empty inbox and no registry files: the workflow refuses to parse without them; lint needs no data
	inbox=$$(mktemp -d) && trap 'rmdir "$$inbox"' EXIT && \
		PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint --config inbox=$$inbox consent=none-required demographics=

# config/README.md is generated from workflow/schemas/config.schema.yaml (tests/unit/test_config.py checks it).
config-docs: setup
	$(BIN)/bidsafe config-docs --write config/README.md

# A wheel a site installs without a clone (setup.py copies the workflow and config/ into it).
wheel: setup
	rm -rf build  # setuptools keeps old build output: a deleted module would ship again
	$(BIN)/python -m pip wheel --no-deps -w dist .

clean-demo:
	rm -rf $(DEMO_DIR)
