# Quick start: `make demo` and `make test` work on a fresh machine; each creates .venv and installs when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fracfl-installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

# Pinned, known-good versions live in pyproject.toml (torch 2.14.1 / torchvision 0.29.1 on this platform).
# Three pip runs on purpose (see the `edge` extra in pyproject.toml and docs/export.md): the project; then the edge
# packages, which pull typing-extensions down to 4.12 (pip prints a conflict with pydantic/flwr: expected); then
# typing-extensions re-pinned, which works for all of them although xdsl declares otherwise (pip prints that
# conflict too). The last line fails the install if flwr or the converter does not import.
TYPING_EXTENSIONS := typing-extensions==4.16.0
EDGE_PINS := import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["edge"]))

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[dev]"
	$(BIN)/python -m pip install --disable-pip-version-check -q $$($(BIN)/python -c '$(EDGE_PINS)')
	$(BIN)/python -m pip install --disable-pip-version-check -q "$(TYPING_EXTENSIONS)"
	$(BIN)/python -c "import flwr.serverapp, litert_torch, ai_edge_quantizer; from ai_edge_litert.interpreter import Interpreter"
	touch $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo  # a fresh demo each time (an existing run folder would be resumed)
	$(BIN)/fracfl simulate experiment=demo run_dir=runs/demo
	$(BIN)/fracfl audit show runs/demo/site-ledgers
	$(BIN)/fracfl audit report runs/demo/site-ledgers runs/demo --out runs/demo/privacy-audit.html

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Lint and type check (docs/development.md): ruff's rules and formatting on the whole tree, mypy on common/ and server/.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf runs data/demo .pytest_cache
