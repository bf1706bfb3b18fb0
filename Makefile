# dataferry: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run run-regions test lint typecheck format check bench clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "dataferry needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml client/pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[dev]' -e './client[polars,pandas,duckdb]'
	@# pip compiles what it installs on one core (40 of its 70 s here); compileall uses both. As
	@# with pip, a file that does not compile (a package's deliberately broken test data) is
	@# left to be compiled, or refused, when imported.
	-$(PY) -m compileall -qq -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) deploy/launch.py --demo

run-regions: install
	$(PY) deploy/launch.py --demo --env-file deploy/regions/eu.env --env-file deploy/regions/us.env

# The suite starts hundreds of servers, operator commands and sandbox children, each importing
# the project: compiled once here, they read its bytecode instead of compiling it again, also where
# PYTHONDONTWRITEBYTECODE keeps Python from caching it (about 5 % of the suite's CPU).
test: install
	$(PY) -m compileall -q api_server data_server shared client/dataferry_client
	sh tests/run_suite.sh $(PY)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: install
	$(PY) -m mypy

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

check: lint typecheck test

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
