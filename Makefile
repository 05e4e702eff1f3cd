# Two commands for a fresh machine:
#   make demo   install everything, start two local Ray clusters, run the daemon, submit example jobs
#   make test   install everything and run the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

# $(call need_311,PYTHON,WHAT,WHAT TO DO): stop with a message unless PYTHON is a Python 3.11,
# the version rmcs is written, tested and measured on.
need_311 = @$(1) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
	echo "make: rmcs needs Python 3.11, but $(2) is $$($(1) -V 2>/dev/null || echo not found). $(3)" >&2; \
	exit 1; }

.PHONY: install bench demo test clean

$(BIN)/python:
	$(call need_311,$(PY),$(PY),Run make again with PY set to a Python 3.11 (e.g. make test PY=python3.11).)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(call need_311,$(BIN)/python,the Python of $(VENV),Remove it (make clean) and run make again with PY=python3.11.)
	$(BIN)/pip install -q -e '.[test]'
	scripts/install-example-deps

bench: install  # the benchmark extras (matplotlib, py-spy); then see bench/README.md
	$(BIN)/pip install -q -e '.[test,bench]'

demo: install
	scripts/ensure-rabbitmq
	$(BIN)/rmcs-demo --clusters clusters.yaml

test: install
	$(BIN)/lint-imports --no-cache  # the layering in .importlinter
	scripts/ensure-rabbitmq
	scripts/ensure-chromium  # Debian's chromium, for the dashboard's browser tests
	scripts/ensure-postgres
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 -m 'not alone' --durations=15  # two workers, a port slot each; the slowest listed
	$(BIN)/python -m pytest -q -p no:cacheprovider -m alone  # last: what restarts a shared service (RabbitMQ, PostgreSQL), by itself

clean:
	rm -rf $(VENV) var .pytest_cache
