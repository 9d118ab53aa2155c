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
# Pins are resolved on the oldest CPython ozbulk supports, so each has a wheel there too.
PIN_PYTHON ?= $(shell for p in python3.11 $(PYENV_ROOT)/versions/3.11*/bin/python3; do \
	"$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null && { echo "$$p"; break; }; done)
PIN_VENV := build/pin-venv

.PHONY: demo test lint typecheck quick bench clean constraints

# constraints.txt pins every package (and pip) to what CI last passed with; pyproject.toml keeps
# the ranges a user's own install accepts.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,bench]'
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

## Re-pin constraints.txt: the newest releases pyproject.toml allows, resolved in a scratch
## CPython 3.11 venv, then checked to have wheels for 3.12 and 3.13. Run `make test` after it.
constraints:
	@test -n "$(PIN_PYTHON)" || { echo "make constraints needs CPython 3.11 (PIN_PYTHON=...)"; exit 2; }
	rm -rf $(PIN_VENV)
	$(PIN_PYTHON) -m venv $(PIN_VENV)
	$(PIN_VENV)/bin/pip install --quiet --upgrade pip
	$(PIN_VENV)/bin/pip install --quiet -e '.[test,bench]'
	{ printf '%s\n' \
	  '# Exact versions `make venv` and CI install (pip install -c constraints.txt), so that a new' \
	  '# release of a dependency cannot break CI overnight. Regenerate with `make constraints`:' \
	  '# the newest releases pyproject.toml allows, resolved on CPython 3.11 and checked to have' \
	  '# wheels for 3.12 and 3.13; then run `make test` and commit both.'; \
	  $(PIN_VENV)/bin/pip freeze --all --exclude-editable --exclude setuptools; } > constraints.txt.new
	for version in 3.12 3.13; do \
	  $(PIN_VENV)/bin/pip install --quiet --dry-run --ignore-installed --only-binary=:all: \
	    --python-version $$version --target $(PIN_VENV)/dry-run -r constraints.txt.new || exit 1; \
	done
	mv constraints.txt.new constraints.txt
	rm -rf $(PIN_VENV)

clean:
	rm -rf $(VENV) $(PIN_VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
