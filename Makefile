# One command each for the README: `make sample` cleans the bundled real sample,
# `make test` runs the whole suite. Both set up a fresh machine first.
SHELL := /bin/bash
UV_VERSION := 0.13.8
UV := $(shell command -v uv >/dev/null 2>&1 && echo uv || echo python3 -m uv)

.PHONY: venv services airflow setup sample test unit lint format bench run e2e-docker

# uv from PyPI, then the locked environment. Debian's own python3 is "externally
# managed", hence the fallbacks; apt only when there is no pip at all.
venv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 \
		|| python3 -m pip install --quiet "uv==$(UV_VERSION)" 2>/dev/null \
		|| python3 -m pip install --quiet --break-system-packages "uv==$(UV_VERSION)" 2>/dev/null \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null \
			&& python3 -m pip install --quiet --break-system-packages "uv==$(UV_VERSION)")
	$(UV) sync --locked --all-extras

# Services the integration tests start themselves (Redis, Prometheus), the docker
# client the compose checks need and the headless Chromium the browser test drives
# (Playwright with /usr/bin/chromium; it never downloads a browser): Debian packages.
services:
	@command -v redis-server >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 \
		&& command -v docker >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends redis-server prometheus docker.io chromium >/dev/null)

setup: venv services

sample: venv
	$(UV) run clean-data tests/fixtures/rakuten_sample.csv -o out/rakuten_sample.cleaned.csv \
		--report out/rakuten_sample.report.json

# ruff (lint and format) over the tree, mypy over src/ (settings in pyproject.toml).
lint: venv
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy

# The fast tests: pure code and the API in-process; no services, no containers.
unit: venv
	$(UV) run pytest tests/unit

# Airflow 3 in its own locked environment (integrations/airflow/.venv), never the service's:
# tests/integration/test_airflow.py runs the DAG with it. Cheap once installed (uv's cache).
# --directory, not --project: uv then reads that project's settings, not the root's.
airflow: venv
	$(UV) sync --locked --directory integrations/airflow

test: lint services airflow
	$(UV) run pytest

format:
	$(UV) run ruff format .
	$(UV) run ruff check --fix .

bench: setup
	$(UV) run python benchmarks/bench_clean.py

run: setup
	mkdir -p data/raw data/cleaned
	$(UV) run honcho start

# Build every image from docker/*/Dockerfile and run them (ETL image, composed job
# service) on a private Docker engine; see scripts/e2e-docker.sh. Needs root.
e2e-docker: setup
	UV="$(UV)" bash scripts/e2e-docker.sh
