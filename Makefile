# predictd: the two commands of the README do all set-up from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= deploy/predictd.serve.toml
PYTEST_ARGS ?=
SOURCES := daemon models reporting migrations tests bench

.PHONY: serve test lint typecheck fmt test-unit test-integration test-e2e bench clean models venv

# Two installs: serving needs the runtime dependencies only; the tests add the [test] extra (pytest, mypy, ruff,
# dcmtk-free test helpers, onnxruntime ...). Sizes in the README ("Installed size").
RUNTIME := $(VENV)/.installed-runtime
TESTING := $(VENV)/.installed-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(RUNTIME): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

$(TESTING): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@ $(RUNTIME)

venv: $(TESTING)

# The database first: `models install` records itself in the audit trail when the database is there.
models: $(RUNTIME)
	$(BIN)/predictd --config $(CONFIG) db upgrade
	$(BIN)/predictd --config $(CONFIG) models install

serve: models
	$(BIN)/predictd --config $(CONFIG) serve

# Every test tier after the static checks; CI runs exactly this (.ci/run).
test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

# ruff, the formatting check and the import contracts of docs/architecture.md (pyproject's [tool.importlinter]).
lint: $(TESTING)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/lint-imports

# mypy finds modules on disk, not through the editable install's import hook, so it reads them through a tree of
# links named as installed (build/typecheck/predictd/daemon -> daemon, ...); its paths start there.
typecheck: $(TESTING)
	mkdir -p build/typecheck/predictd
	for pkg in daemon models reporting migrations; do ln -sfn ../../../$$pkg build/typecheck/predictd/$$pkg; done
	$(BIN)/mypy

fmt: $(TESTING)
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

test-unit: $(TESTING)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: $(TESTING)
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test-e2e: $(TESTING)
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

bench: $(TESTING)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) var build *.egg-info
