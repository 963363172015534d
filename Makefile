# One command each: make test, make lint, make bench, make up.
# Every target installs exactly the lock (uv.lock) first; `make lock` refreshes it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# uv installs the lock; it lives in its own small virtualenv, installed from
# requirements/uv.txt with pip's --require-hashes.
TOOLS := .tools
UV := $(TOOLS)/bin/uv
STAMP := $(VENV)/.installed
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
export UV_NO_PROGRESS := 1

.PHONY: native test-native test test-bench test-sentinel test-cluster test-browser screenshots lint bench up venv lock clean

$(UV): requirements/uv.txt
	$(PYTHON) -m venv --clear $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/uv.txt
	touch $(UV)

# --locked: fail if uv.lock no longer matches pyproject.toml (run `make lock`).
$(STAMP): uv.lock pyproject.toml $(UV)
	$(UV) sync --quiet --locked --extra dev --python $(PYTHON)
	touch $(STAMP)

venv: $(STAMP)

# The gateway's hot path compiled by mypyc into build/native/ (core/native/loader.py):
# rebuilt when any file of core/ is newer than the build. Without a C compiler it
# says so and the gateway runs its Python source, as it always can.
NATIVE := build/native/manifest.json
# A failed build stops nothing (the leading -): the source runs, and says why.
$(NATIVE): $(STAMP) $(shell find core -name '*.py')
	-$(PY) -m core.native.build

native: $(NATIVE)

# The suites of the hot path again, against the compiled build (ESSAIM_NATIVE=require:
# the run fails at once if the build does not match the source): the gateway's, and
# those of what else imports the compiled modules (service calls, discovery, recovery).
NATIVE_TESTS := tests/core/proxy tests/core/routes tests/core/upstream tests/test_gateway.py \
	tests/test_gateway_ratelimit.py tests/test_gateway_security.py tests/test_gateway_sessions.py \
	tests/test_gateway_workers.py tests/test_many_gateways.py tests/core/native \
	tests/core/service tests/core/registry/test_discovery.py tests/test_recovery.py \
	tests/test_openapi.py

test-native: $(NATIVE)
	ESSAIM_NATIVE=require $(PY) -m pytest $(XDIST) $(NATIVE_TESTS) $(PYTEST_ARGS)

# The suite, but for the benchmarks' smoke runs (make test-bench) and the browser
# tests (make test-browser: a real browser, the whole system), spread over every
# CPU by pytest-xdist (each worker starts its own Redis); `make test XDIST=` runs
# it in one process.
XDIST ?= -n auto
test: $(STAMP)
	ESSAIM_NATIVE=off $(PY) -m pytest $(XDIST) --ignore=tests/bench --ignore=tests/browser $(PYTEST_ARGS)

# Every benchmark's --quick smoke run, so that none rots: a few minutes of
# processes under load, kept apart so that make test stays short.
test-bench: $(STAMP)
	$(PY) -m pytest tests/bench $(PYTEST_ARGS)

# The tests of everything that keeps state in Redis (registry, config, event
# bus, rate limits), against a primary + replica + three Sentinels, then
# against a 3-primary Cluster, each started by the tests on free ports.
TOPOLOGY_TESTS := tests/test_registry.py tests/core/registry tests/test_configsvc.py \
	tests/core/config/test_store.py tests/core/config/test_client.py tests/core/events \
	tests/core/security/test_ratelimit.py tests/test_many_gateways.py \
	tests/test_gateway_ratelimit.py

test-sentinel: $(STAMP)
	$(PY) -m pytest --redis-topology=sentinel $(TOPOLOGY_TESTS) $(PYTEST_ARGS)

test-cluster: $(STAMP)
	$(PY) -m pytest --redis-topology=cluster $(TOPOLOGY_TESTS) $(PYTEST_ARGS)

# The console in a real headless Chromium (Debian's `chromium`, driven by Playwright; no
# browser is downloaded) against the whole system the launcher starts. Not part of `make test`.
CHROMIUM ?= /usr/bin/chromium
export CHROMIUM

test-browser: $(STAMP)
	@command -v $(CHROMIUM) >/dev/null 2>&1 || { echo "test-browser: no Chromium at $(CHROMIUM): install Debian's package (apt-get install chromium) or give CHROMIUM=/path/to/chromium" >&2; exit 2; }
	$(PY) -m pytest tests/browser $(PYTEST_ARGS)

# The console's views as PNGs in docs/images/ (starts the system, logs in, saves).
screenshots: $(STAMP)
	$(PY) -m services.console.screenshots

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP) $(NATIVE)
	$(PY) -m bench all $(BENCH_ARGS)

# The system runs the compiled hot path when `make native` built one that matches.
up: $(STAMP)
	$(PY) -m services $(UP_ARGS)

# Refresh the lock on purpose: every dependency to its newest release that
# pyproject.toml's ranges allow. Say what moved in CHANGELOG.md.
# `make lock LOCK_ARGS=` only adds what pyproject.toml newly asks for, moving nothing else.
LOCK_ARGS ?= --upgrade
lock: $(UV)
	$(UV) lock $(LOCK_ARGS) --python $(PYTHON)

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
