# Everything a fresh clone needs: Python 3.11+, Node.js with npm, and make.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The browser tests drive Debian's Chromium; Playwright's own browser
# download is not used.
CHROMIUM := /usr/bin/chromium
# nginx sits in front of the nodes in `make cluster` and in the cluster tests.
NGINX := /usr/sbin/nginx

.PHONY: run cluster test fuzz lint format bench bench-quick screenshots clean

run: $(VENV)/.runtime node_modules/.installed
	$(PY) -m sio_server serve

# Three nodes on the machine's PostgreSQL and Redis behind nginx, for a demo;
# `make cluster CLUSTER_ARGS="--nodes 5 --port 9000"` changes the defaults.
cluster: $(VENV)/.runtime node_modules/.installed $(NGINX)
	$(PY) -m deploy.cluster $(CLUSTER_ARGS)

# The suite runs twice: on SQLite, then with every test server on a new
# PostgreSQL database (see README, Tests). The second pass leaves out the
# browser tests, which test the web pages and take several minutes whatever
# the store, and the cluster tests, which run on PostgreSQL in both. Without
# a PostgreSQL server at CHAT_TEST_POSTGRES_URL its tests skip, or fail when
# CHAT_REQUIRE_SERVICES=1.
NOT_IN_POSTGRES_PASS := $(wildcard tests/test_browser*.py) tests/test_cluster.py
test: $(VENV)/.dev node_modules/.installed $(CHROMIUM) $(NGINX)
	$(PY) -m pytest
	CHAT_TEST_DATABASE=postgres $(PY) -m pytest $(addprefix --ignore=,$(NOT_IN_POSTGRES_PASS))

# The long form of the fuzz and churn tests, which `make test` runs short.
fuzz: $(VENV)/.dev node_modules/.installed
	FUZZ_EXAMPLES=5000 CHURN_CYCLES=3000 $(PY) -m pytest tests/test_fuzz.py tests/test_churn.py

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check sio_server tests bench deploy
	$(VENV)/bin/ruff format --check sio_server tests bench deploy
	$(VENV)/bin/mypy

format: $(VENV)/.dev
	$(VENV)/bin/ruff format sio_server tests bench deploy
	$(VENV)/bin/ruff check --fix sio_server tests bench deploy

$(VENV)/bin/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is required" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(VENV)/bin/python
	$(PIP) install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(PIP) install --quiet -r requirements-dev.txt
	touch $(VENV)/.runtime $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "Chromium is missing: run 'sudo apt-get install chromium', then make test" >&2; \
		exit 1; \
	fi

$(NGINX):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; \
	else \
		echo "nginx is missing: run 'sudo apt-get install nginx', then run make again" >&2; \
		exit 1; \
	fi

bench: $(VENV)/.dev node_modules/.installed bench/node_modules/.installed
	$(PY) bench/run.py

bench-quick: $(VENV)/.dev node_modules/.installed bench/node_modules/.installed
	$(PY) bench/run.py --quick

bench/node_modules/.installed: bench/package.json bench/package-lock.json
	cd bench && npm ci --no-audit --no-fund
	touch $@

screenshots: $(VENV)/.dev node_modules/.installed $(CHROMIUM)
	$(PY) -m tests.screenshots docs/images

clean:
	rm -rf $(VENV) node_modules bench/node_modules .pytest_cache .mypy_cache .ruff_cache
