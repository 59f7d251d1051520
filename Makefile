# streamrec developer targets. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help install system-deps demo test lint unit integration services-up services-down services-status bench-ingest clean

help: ## List the targets and what each does
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "streamrec needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

install: $(STAMP) ## Create .venv and install streamrec with its dev tools

system-deps: ## Install what the tests need from Debian: redis-server, Java 17, Maven, Chromium (docker-compose if docker is here)
	@need=(); \
	command -v redis-server >/dev/null || need+=(redis-server); \
	command -v chromium >/dev/null || need+=(chromium); \
	command -v java >/dev/null || need+=(openjdk-17-jre-headless); \
	command -v mvn >/dev/null || need+=(maven); \
	if command -v docker >/dev/null && ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then need+=(docker-compose); fi; \
	if [ $${#need[@]} -gt 0 ]; then \
	  echo "installing $${need[*]}"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq "$${need[@]}" >/dev/null; \
	fi

demo: install ## Install, then run the whole system in one process (no Kafka/Redis) at http://127.0.0.1:8000
	$(BIN)/streamrec demo

test: install system-deps ## Install, start Kafka, Redis and a 3-master Redis Cluster, lint, and run every test
	$(BIN)/streamrec services up --redis-cluster 3
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest

lint: install ## ruff (lint and format) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: install ## Tests that need no services
	$(BIN)/python -m pytest -m "not integration"

integration: install system-deps ## Tests on the real Kafka broker and Redis server
	$(BIN)/streamrec services up --redis-cluster 3
	$(BIN)/python -m pytest -m integration

services-up: install ## Start local Kafka and Redis
	$(BIN)/streamrec services up

services-down: install ## Stop local Kafka and Redis
	$(BIN)/streamrec services down

services-status: install ## Show whether Kafka and Redis answer
	$(BIN)/streamrec services status

bench-ingest: install system-deps ## Worker events/s against a bare consume loop (and faust)
	$(BIN)/streamrec services up
	$(BIN)/streamrec bench ingest --faust

clean: ## Remove the venv, caches and local service data
	-$(BIN)/streamrec services down
	rm -rf $(VENV) .streamrec .pytest_cache .mypy_cache .ruff_cache artifacts
