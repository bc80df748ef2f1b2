# The two commands of the README: `make run` and `make test`. Both create the
# virtual environment in .venv on first use (torch 2.13.0 CPU, invfp with every
# extra, and the first-party plugin packages under plugins/).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.invfp-installed
PLUGIN_DIRS := $(wildcard plugins/*/pyproject.toml)

.PHONY: install run quick test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml $(PLUGIN_DIRS)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,soap,dask,report]" $(foreach p,$(PLUGIN_DIRS),-e $(dir $(p)))
	@touch $@

run: $(STAMP)
	$(VENV)/bin/invfp run --repr acsf --model cvae -o runs/default

quick: $(STAMP)
	$(VENV)/bin/invfp run --repr acsf --model cvae --quick -o runs/quick

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider
	$(VENV)/bin/ruff check .

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
