# Two commands do all set-up: `make run` (the workflow on the bundled demo) and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CORES ?= 8

.PHONY: run test test-slurm bench clean-results lint dry-run

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES)

test: $(STAMP)
	$(VENV)/bin/pytest

dry-run: $(STAMP)
	$(VENV)/bin/snakemake -n --cores $(CORES)

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

bench: $(STAMP)
	$(PY) benchmarks/ablation.py

clean-results:
	rm -rf results .snakemake
