# Quick start: `make run` and `make test`. Both set up everything they need.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
ARGS   ?=
# Debian packages the tests drive: prometheus (promtool, reference server), golang-go (go tool
# pprof), memcached (store-gateway caches), etcd-server (the rings' etcd KV store),
# prometheus-alertmanager (prometheus-alertmanager, amtool: the ruler's notifications).
DEBS   := prometheus golang-go memcached etcd-server prometheus-alertmanager chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test build venv debs clean bench bench-ingest bench-query fuzz

$(VENV)/.installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed

build: venv
	$(PY) setup.py -q build_ext --inplace -j 2

debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: debs build
	$(PY) -m pytest -q tests

# Long fuzz runs: every decoder and endpoint target of tests/fuzz/targets.py, FUZZ_RUNS inputs
# each, under atheris (hypothesis if atheris is missing). `make test` runs a bounded
# hypothesis pass of the same targets (URDAR_FUZZ_EXAMPLES, default 300 each).
FUZZ_RUNS ?= 100000
FUZZ_OUT  ?= .fuzz
fuzz: build
	mkdir -p $(FUZZ_OUT)
	$(PY) -m tests.fuzz.run --runs $(FUZZ_RUNS) --out $(FUZZ_OUT)

run: build
	$(PY) -m urdar -blocks-storage.tsdb.dir=./data/tsdb -blocks-storage.filesystem.dir=./data/blocks \
	  -blocks-storage.bucket-store.sync-dir=./data/tsdb-sync -compactor.data-dir=./data/compactor -ruler-storage.filesystem.dir=./data/ruler \
	  -alertmanager-storage.filesystem.dir=./data/alertmanager -alertmanager.storage.path=./data/alertmanager-state $(ARGS)

bench: build debs
	$(PY) benchmarks/engine_bench.py

bench-ingest: build debs
	$(PY) benchmarks/ingest_bench.py

bench-query: build debs
	$(PY) benchmarks/query_bench.py

clean:
	rm -rf build $(VENV) .mypy_cache urdar/*/*.c urdar/*/*.so
