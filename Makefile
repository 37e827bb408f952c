# predictd: the two commands of the README do all set-up from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= deploy/predictd.serve.toml
PYTEST_ARGS ?=

.PHONY: serve test lint typecheck bench clean models

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

test: $(BIN)/predictd
	$(BIN)/ruff check daemon models reporting migrations tests bench
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(BIN)/predictd
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) var build *.egg-info
