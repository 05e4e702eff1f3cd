# Two commands for a fresh machine:
#   make demo   install everything, start two local Ray clusters, run the daemon, submit example jobs
#   make test   install everything and run the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install bench demo test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	scripts/install-example-deps

bench: install  # the benchmark extras (matplotlib, py-spy); then see bench/README.md
	$(BIN)/pip install -q -e '.[test,bench]'

demo: install
	scripts/ensure-rabbitmq
	$(BIN)/rmcs-demo --clusters clusters.yaml

test: install
	scripts/ensure-rabbitmq
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) var .pytest_cache
