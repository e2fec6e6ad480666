# omnirouter — `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CACHE         ?= $(HOME)/.cache/omnirouter
TANSU_VERSION := 0.6.0
TANSU_ROOT    := $(CACHE)/tansu-$(TANSU_VERSION)
TANSU         := $(TANSU_ROOT)/bin/tansu
VENV          := $(CURDIR)/.venv
APT_PACKAGES  := pkg-config libssl-dev zlib1g-dev make curl prometheus docker-compose \
                 dovecot-imapd dovecot-lmtpd dovecot-submissiond opensmtpd chromium
BENCH_PACKAGES := wrk jq

export CARGO_TARGET_DIR ?= $(CURDIR)/target
export TANSU_BIN := $(TANSU)
export CARGO_TERM_COLOR ?= never

.PHONY: help deps run test lint bench build clean-run

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

deps: apt $(TANSU) $(VENV)/.ok ## Install what builds and tests need (apt packages, tansu broker, Python client)

.PHONY: apt
apt:
	@missing=""; for p in $(APT_PACKAGES) $(EXTRA_APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(TANSU): | apt
	@echo "building the tansu $(TANSU_VERSION) Kafka broker into $(TANSU_ROOT) (once; ~12 min cold)"
	cargo install tansu --locked --version $(TANSU_VERSION) --features dynostore,libsql --root $(TANSU_ROOT)

$(VENV)/.ok: Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check confluent-kafka kubernetes-validate pyyaml 'moto[server]'
	touch $@

build: apt ## Build the daemon (debug)
	cargo build -p omnirouter

run: deps ## Start a local broker and the daemon with config/default.toml
	cargo build --release -p omnirouter
	TANSU=$(TANSU) OMNIROUTER=$(CARGO_TARGET_DIR)/release/omnirouter PYTHON=$(VENV)/bin/python \
	  bash deploy/local/run.sh

test: deps ## Everything: unit, property and end-to-end tests against the real broker
	cargo build -p omnirouter
	cargo test --workspace --all-targets

lint: apt ## rustfmt and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench: deps ## Ingest load test (wrk) with its references, the 10k idle live chat sockets test, the 50,000-conversation simulated day, and criterion benches
	$(MAKE) apt EXTRA_APT="$(BENCH_PACKAGES)"
	bash benches/ingest.sh
	cargo build --release -p omnirouter -p omni-benches --bin omnirouter --bin livechat-load
	$(CARGO_TARGET_DIR)/release/livechat-load --daemon $(CARGO_TARGET_DIR)/release/omnirouter --connections 10000
	$(CARGO_TARGET_DIR)/release/omnirouter simulate benches/simulate_day.toml > /dev/null
	cargo bench -p omni-benches

clean-run: ## Remove the local broker's data (.run/)
	rm -rf .run
