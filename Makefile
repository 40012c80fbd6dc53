# cxrtool — the README's two commands are `make demo` and `make test`.
# Uses the active virtual environment if there is one, else creates ./.venv.
SHELL := /bin/bash
ifdef VIRTUAL_ENV
BIN := $(VIRTUAL_ENV)/bin
else
BIN := $(CURDIR)/.venv/bin
endif
PY := $(BIN)/python
STAMP := $(BIN)/.cxrtool-installed
PARITY_STAMP := $(BIN)/.cxrtool-parity-installed
SHARED_DATA ?= ../shared/data
QUERY ?= cardiomegaly

.PHONY: install parity debs browser demo test test-fast lint bench sample-data default-model clean

$(PY):
	python3 -m venv $(CURDIR)/.venv

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

## parity: the upstream packages the seed-model import tests compare against (test-only)
$(PARITY_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,ray,parity]'
	$(PY) -m pip install --quiet --no-deps medclip==0.0.3
	touch $(PARITY_STAMP)

parity: $(PARITY_STAMP)

## demo: install, embed the bundled sample archive with the bundled model, index it, search it
demo: install
	$(BIN)/cxrtool embed sample_data/archive
	$(BIN)/cxrtool index
	$(BIN)/cxrtool search "$(QUERY)" -k 5
	$(BIN)/cxrtool search "pleural effusion" -k 5

## debs: Debian packages the tests use: chromium (the serve page, driven by Playwright, which never
## downloads a browser) and orthanc + orthanc-dicomweb (a real PACS for the DICOMweb tests). Only the
## missing ones are installed; without root or sudo, or without a package source, those tests skip and say why.
DEBS_NEEDED = $(if $(wildcard /usr/bin/chromium),,chromium) \
	$(if $(wildcard /usr/sbin/Orthanc),,orthanc) \
	$(if $(wildcard /usr/share/orthanc/plugins/libOrthancDicomWeb.so),,orthanc-dicomweb)
debs:
	@if [ -n "$(strip $(DEBS_NEEDED))" ] && command -v apt-get >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=sudo; \
	  else echo "$(strip $(DEBS_NEEDED)) missing and cannot be installed (not root, no sudo): their tests will skip"; exit 0; fi; \
	  echo "installing $(strip $(DEBS_NEEDED)) (apt-get) for the page and PACS tests"; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS_NEEDED) >/dev/null \
	    || echo "apt-get could not install $(strip $(DEBS_NEEDED)): their tests will skip"; \
	fi
browser: debs

## test: the whole suite (unit + end-to-end CLI on sample_data, the serve page in headless chromium, a real Orthanc,
## the seed-model imports against their upstream packages)
test: install debs parity
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check src tests scripts benchmarks

bench: install
	$(BIN)/python benchmarks/embed_throughput.py sample_data/archive

## sample-data / default-model: rebuild the bundled data and model from ../shared/data
sample-data: install
	$(PY) scripts/build_sample_data.py $(SHARED_DATA)

default-model: install
	cd scripts && $(PY) build_default_model.py $(abspath $(SHARED_DATA))

clean:
	rm -rf cxrtool_workspace .pytest_cache .ruff_cache
