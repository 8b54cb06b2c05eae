# Sightline's two commands: `make demo` (set up, replay the bundled demo, print its costs) and
# `make test` (the whole suite, including end to end on a real LiveKit server).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LIVEKIT_SERVER_VERSION := v1.13.5
LIVEKIT_SERVER := $(HOME)/.cache/sightline/bin/livekit-server
STAMP := $(VENV)/.installed

.PHONY: demo test install livekit-server lint bench clean

demo: $(STAMP)
	$(BIN)/sightline replay fixtures/demo

test: $(STAMP) $(LIVEKIT_SERVER)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -ra

install: $(STAMP)

# Every Python dependency, pinned in requirements.lock (generated from pyproject.toml's pins).
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The LiveKit server the end-to-end tests run, built from source with Go and cached per user.
livekit-server: $(LIVEKIT_SERVER)
$(LIVEKIT_SERVER):
	@command -v go >/dev/null || { echo "Go >= 1.26 is needed to build livekit-server"; exit 1; }
	mkdir -p $(dir $@)
	GOBIN=$(dir $@) GOFLAGS=-mod=mod go install github.com/livekit/livekit-server/cmd/server@$(LIVEKIT_SERVER_VERSION)
	mv $(dir $@)server $@

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
