# Quick start: `make demo` and `make test` work on a fresh machine; each creates .venv and installs when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fracfl-installed

.PHONY: install demo test bench clean

install: $(STAMP)

# Pinned, known-good versions live in pyproject.toml (torch 2.14.1 / torchvision 0.29.1 on this platform).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo  # a fresh demo each time (an existing run folder would be resumed)
	$(BIN)/fracfl simulate experiment=demo run_dir=runs/demo
	$(BIN)/fracfl audit show runs/demo/site-ledgers
	$(BIN)/fracfl audit report runs/demo/site-ledgers runs/demo --out runs/demo/privacy-audit.html

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf runs data/demo .pytest_cache
