# predictd: the two commands of the README do all set-up from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= deploy/predictd.serve.toml
PYTEST_ARGS ?=
SOURCES := daemon models reporting migrations tests bench

.PHONY: serve test lint typecheck fmt test-unit test-integration test-e2e bench clean models venv

$(BIN)/predictd: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

venv: $(BIN)/predictd

models: $(BIN)/predictd
	$(BIN)/predictd --config $(CONFIG) models install

serve: $(BIN)/predictd models
	$(BIN)/predictd --config $(CONFIG) db upgrade
	$(BIN)/predictd --config $(CONFIG) serve

# Every test tier after the static checks; CI runs exactly this (.ci/run).
test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

# ruff, the formatting check and the import contracts of docs/architecture.md (pyproject's [tool.importlinter]).
lint: $(BIN)/predictd
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/lint-imports

# mypy finds modules on disk, not through the editable install's import hook, so it reads them through a tree of
# links named as installed (build/typecheck/predictd/daemon -> daemon, ...); its paths start there.
typecheck: $(BIN)/predictd
	mkdir -p build/typecheck/predictd
	for pkg in daemon models reporting migrations; do ln -sfn ../../../$$pkg build/typecheck/predictd/$$pkg; done
	$(BIN)/mypy

fmt: $(BIN)/predictd
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

test-unit: $(BIN)/predictd
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: $(BIN)/predictd
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test-e2e: $(BIN)/predictd
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

bench: $(BIN)/predictd
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) var build *.egg-info
