# The two commands a fresh machine needs: `make demo` and `make test`.
# The newest CPython 3.11+ on the machine, pyenv's installed versions included. From 3.12 on,
# aiohttp starts each request's write eagerly instead of one event-loop turn later, which is what
# lets a latency-bound run keep its requests in flight (README → Performance). 3.11 works too:
# `make PYTHON=python3.11 test`.
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null)
PYTHON ?= $(shell for p in python3.13 python3.12 $(PYENV_ROOT)/versions/3.13*/bin/python3 \
	$(PYENV_ROOT)/versions/3.12*/bin/python3 python3; do \
	"$$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo "$$p"; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck quick bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

## Run the whole job end to end against the embedded fake Ozonetel API.
demo: $(STAMP)
	$(BIN)/python -m engine demo

## Quality gates, then the whole test suite.
test: $(STAMP) lint typecheck
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check engine tests benchmarks
	$(BIN)/ruff format --check engine tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

## The quick loop: tests without the real-time `slow` ones.
quick: $(STAMP)
	$(BIN)/pytest -q -m 'not slow' -x

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
