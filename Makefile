# audit: every target creates .venv/ and installs what it needs on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DATASET ?= sample
export AUDIT_NO_PROGRESS ?=

.DEFAULT_GOAL := help
.PHONY: help install system demo test test-slow bench lint format typecheck experiment sample clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# Debian packages the tests and the demo use (a headless browser for the page checks, exiftool
# for the XMP round trip). Installed only where missing, and only when we may (root with apt).
SYSTEM_PACKAGES := chromium chromium-driver libimage-exiftool-perl
SYSTEM_STAMP    := $(VENV)/.system-$(shell echo $(SYSTEM_PACKAGES) | cksum | cut -d' ' -f1)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

$(SYSTEM_STAMP): $(STAMP)
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null; \
	  else echo "warning: missing Debian packages:$$missing (tests that need them are skipped; run: sudo apt-get install$$missing)"; fi; \
	fi
	touch $(SYSTEM_STAMP)

system: $(SYSTEM_STAMP)  ## Install the Debian packages the tests use (chromium, exiftool) where missing

install: $(STAMP)  ## Create .venv/ and install audit with its dev tools

demo: $(SYSTEM_STAMP)  ## Run every stage on the bundled sample; reports land in reports/sample/
	$(BIN)/audit run indexes/$(DATASET) --demo --report-dir reports/$(DATASET)

test: $(SYSTEM_STAMP) lint typecheck  ## Lint, type-check, then run the test suite (under 15 minutes on 2 cores)
	$(BIN)/pytest -m "not slow" -p no:cacheprovider

test-slow: $(SYSTEM_STAMP)  ## Run the slow tests too (kill -9 resume, longer training)
	$(BIN)/pytest -p no:cacheprovider

bench: $(STAMP)  ## Benchmarks against baselines, side by side; results in reports/bench/
	$(BIN)/pip install --quiet --no-deps 'imagededup>=0.3.3'  # the `bench` extra; never reinstalls torch
	$(BIN)/python -m audit.bench --out reports/bench

experiment: $(STAMP)  ## The memorisation experiment on the bundled sample (reports/experiments/)
	$(BIN)/audit experiment memorisation --out reports/experiments/memorisation

sample: $(STAMP)  ## Rebuild the bundled sample from Debian's openclipart-png
	@test -d /usr/share/openclipart/png || (echo "run: apt-get install openclipart-png"; exit 1)
	$(BIN)/audit sample build --out audit/data/sample

lint: $(STAMP)  ## ruff lint + format check
	$(BIN)/ruff check audit tests
	$(BIN)/ruff format --check audit tests

format: $(STAMP)  ## ruff format + autofix
	$(BIN)/ruff format audit tests
	$(BIN)/ruff check --fix audit tests

typecheck: $(STAMP)  ## mypy on the library
	$(BIN)/mypy audit

clean:  ## Remove the workspace and reports made by the demo (keeps .venv/)
	rm -rf indexes/$(DATASET) reports/$(DATASET) models/$(DATASET)
