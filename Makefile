# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
DASHBOARD_PORT ?= 8265
METRICS_PORT ?= 8080
STAMP := $(VENV)/.installed-stamp
export RAY_USAGE_STATS_ENABLED ?= 0
# Ray Serve's proxy bounds request bodies as they stream in (serve_app/body_limit.py).
export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH ?= serve_app.body_limit:proxy_middlewares

.PHONY: install tiny browser postgres serve lint format test soak test-gpu bench bench-cold-start bench-recovery bench-memory bench-gpu clean

# torch is pinned and installed first: this machine has a CPU wheel of torch 2.13.0 on disk,
# and an unpinned torch would pull several GB of CUDA packages.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,lint]"
	touch $@

install: $(STAMP)

# Tiny random-weight twins, built once under models/ (WAN_SERVE_MODEL_DIR).
tiny: $(STAMP)
	$(VENV)/bin/wan-serve models build-tiny

# Debian's chromium, for the studio and /docs tests: Playwright drives it and never downloads a browser.
browser:
	@command -v chromium >/dev/null || { \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get install -y chromium || { $$sudo apt-get update && $$sudo apt-get install -y chromium; }; }

# Debian's PostgreSQL server binaries, for the job store's tests on PostgreSQL (tests/postgres_server.py
# starts a server of its own on 127.0.0.1; nothing runs as a system service).
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get install -y postgresql || { $$sudo apt-get update && $$sudo apt-get install -y postgresql; }; }

# Ray (its dashboard on 127.0.0.1:$(DASHBOARD_PORT), its Prometheus metrics on :$(METRICS_PORT)) and the
# app on 127.0.0.1:$(PORT), in the foreground. When every variant is ready, one line says where things are.
serve: tiny
	$(VENV)/bin/wan-serve render-config serve_config.yaml --port $(PORT) --out .run/serve_config.yaml
	@started=0; \
	if $(VENV)/bin/ray start --head --include-dashboard=true --dashboard-host=127.0.0.1 \
	     --dashboard-port=$(DASHBOARD_PORT) --metrics-export-port=$(METRICS_PORT) --disable-usage-stats; then \
	  started=1; \
	else echo "ray start failed; using the Ray cluster that is already running"; fi; \
	$(VENV)/bin/wan-serve server wait --server http://127.0.0.1:$(PORT) \
	  --dashboard http://127.0.0.1:$(DASHBOARD_PORT) --metrics http://127.0.0.1:$(METRICS_PORT)/metrics & \
	waiter=$$!; \
	trap 'kill $$waiter 2>/dev/null; [ $$started = 1 ] && $(VENV)/bin/ray stop' EXIT; \
	$(VENV)/bin/serve run --address auto .run/serve_config.yaml

# ruff (lint, and the format check) and mypy, configured in pyproject.toml; `make test` runs it first.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint tiny browser postgres
	$(PY) -m pytest -m "not soak" --durations=25 --ignore=tests/cluster tests
	# A session of its own: a process joins one Ray cluster, and this one has two nodes.
	$(PY) -m pytest -m "not soak" --durations=10 tests/cluster

# The soak tests, then the API fuzz with 200 generated requests per operation (10 in `make test`).
soak: tiny
	$(PY) -m pytest -m soak --ignore=tests/cluster tests
	WAN_SERVE_FUZZ_EXAMPLES=200 $(PY) -m pytest tests/test_api_fuzz.py

# On a GPU machine: bitsandbytes (the [gpu] extra) for the int8 and nf4 modes, then the CUDA module.
test-gpu: tiny
	$(PY) -m pip install -q -e ".[gpu]"
	$(PY) -m pytest tests/gpu -rs

bench: tiny
	$(PY) bench/job_latency.py --variant ti2v-5b-tiny t2v-a14b-tiny i2v-a14b-tiny vace-14b-tiny qwen-image-edit-tiny --size 1280x720 --jobs 2

# Recovery times after a router kill, a generator crash and a CUDA-style error.
bench-cold-start: tiny
	$(PY) bench/cold_start.py --variant ti2v-5b-tiny --rounds 3

bench-recovery: tiny
	$(PY) bench/recovery.py --rounds 2

# Weight bytes and peak memory per memory mode beside the fit check's estimates.
bench-memory: $(STAMP)
	$(PY) bench/memory.py --doc docs/performance.md

# The real models' parts at full size on a GPU, from random weights built there (no download):
# text encoder, seconds per step of each speed profile, VAE decode, MP4, peak memory, MFU.
bench-gpu: $(STAMP)
	$(PY) bench/gpu.py --doc docs/performance.md

clean:
	rm -rf .run var models
