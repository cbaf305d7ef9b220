# Two commands do all set-up: `make run` (the workflow on the bundled demo) and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SLURM_STAMP := $(VENV)/.installed-slurm-stamp
CORES ?= 8
# setup_slurm.sh needs root (packages, /etc/slurm, daemons).
SUDO ?= $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: run run-classification test test-slurm bench bench-dag clean-results lint dry-run

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(SLURM_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,slurm]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES)

# A real-vs-generated detector on the same demo, labelled (results/classification/).
run-classification: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config-classification.yaml

test: $(STAMP)
	sh tests/tools/ensure_chromium.sh
	$(VENV)/bin/pytest

# A real single-node SLURM on this machine (installed and started if needed), then the
# tiny workflow through profiles/slurm, compared with a local run (tests/test_slurm.py).
test-slurm: $(SLURM_STAMP)
	$(SUDO) tests/slurm/setup_slurm.sh
	$(VENV)/bin/pytest -m slurm tests/test_slurm.py

dry-run: $(STAMP)
	$(VENV)/bin/snakemake -n --cores $(CORES)

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

bench: $(STAMP)
	$(PY) benchmarks/ablation.py

bench-dag: $(STAMP)
	$(PY) benchmarks/dag.py

clean-results:
	rm -rf results .snakemake
