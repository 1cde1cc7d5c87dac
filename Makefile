# Two commands for a newcomer: `make demo` and `make test`. Both go through `make setup`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bidsafe-installed
CORES ?= all
DEMO_DIR ?= demo

.PHONY: setup demo test lint clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/bidsafe --version
	$(BIN)/snakemake --version
	touch $(STAMP)

demo: setup
	$(BIN)/bidsafe demo-data $(DEMO_DIR)/inbox --subjects 4 --sessions 2 --seed 1
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml
	@$(BIN)/bidsafe where --configfile config/demo.yaml

test: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint --configfile config/demo.yaml

clean-demo:
	rm -rf $(DEMO_DIR)
