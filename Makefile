# Two commands on a fresh machine (see README.md):
#   make run    install and start Slipstream on its embedded defaults
#   make test   install what the tests need, then lint, type-check and run every test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lint browser node-deps bench screenshots

run: $(VENV)/.runtime
	$(PY) manage.py serve

# The suite runs twice: on the embedded defaults (SQLite, in memory), then on PostgreSQL and
# Redis as several processes would share them (tests/integration/test_multiprocess.py runs only
# then). Both services must be running locally; .ci/run starts them.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/slipstream
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

test: $(VENV)/.dev browser node-deps lint
	$(PY) -m pytest
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) -m pytest

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

bench: $(VENV)/.dev
	$(PY) bench/run_all.py

# Every page at phone and desktop widths, light and dark, into docs/screenshots/ (replaced).
screenshots: $(VENV)/.dev browser node-deps
	$(PY) -m tests.support.screenshots docs/screenshots

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# llama-cpp-python compiles llama.cpp on its first install (about 8 minutes on 2 cores); pip's
# wheel cache makes later installs quick.
$(VENV)/.dev: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.runtime $@

# Browser tests drive Debian's Chromium; Playwright must never download a browser of its own.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "Browser tests need Debian's chromium: sudo apt-get install chromium" >&2; exit 1; fi; \
	fi

node-deps:
	@if [ -f tests/js/package.json ]; then cd tests/js && npm ci --no-audit --no-fund --silent; fi
