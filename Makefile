# Two commands on a fresh machine (see README.md):
#   make run    install and start Slipstream on its embedded defaults
#   make test   install what the tests need, then lint, type-check and run every test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lint lock browser node-deps bench screenshots

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

# requirements.txt and requirements-dev.txt are locks: every package pinned with its hashes, and
# pip refuses any file whose hash is not listed (a release replaced on the index, a compromised
# mirror). `make lock` writes them from the top-level pins in requirements*.in.
$(VENV)/.runtime: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet --require-hashes -r requirements.txt
	touch $@

# llama-cpp-python compiles llama.cpp on its first install (about 8 minutes on 2 cores); pip's
# wheel cache makes later installs quick.
$(VENV)/.dev: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.txt
	touch $(VENV)/.runtime $@

# Re-lock after changing a pin in requirements*.in: versions already locked are kept unless a pin
# asks otherwise (`make lock UPGRADE=--upgrade` moves every unpinned package to its newest).
PIP_COMPILE := pip-compile --quiet --generate-hashes --allow-unsafe --no-strip-extras --no-emit-index-url \
	--no-emit-find-links $(UPGRADE)
lock:
	$(PYTHON) -m venv $(VENV)-lock && $(VENV)-lock/bin/pip install --quiet pip-tools==7.7.0
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)-lock/bin/$(PIP_COMPILE) -o requirements.txt requirements.in
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)-lock/bin/$(PIP_COMPILE) -o requirements-dev.txt requirements-dev.in

# Browser tests drive Debian's Chromium; Playwright must never download a browser of its own.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "Browser tests need Debian's chromium: sudo apt-get install chromium" >&2; exit 1; fi; \
	fi

node-deps:
	@if [ -f tests/js/package.json ]; then cd tests/js && npm ci --no-audit --no-fund --silent; fi
