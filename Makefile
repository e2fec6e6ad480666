# omnirouter — `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CACHE         ?= $(HOME)/.cache/omnirouter
TANSU_VERSION := 0.6.0
TANSU_ROOT    := $(CACHE)/tansu-$(TANSU_VERSION)
TANSU         := $(TANSU_ROOT)/bin/tansu
VENV          := $(CURDIR)/.venv
# The Node.js CRM example (examples/node): its packages, installed by `npm ci` from the lockfile.
NODE_MODULES  := $(CURDIR)/examples/node/node_modules/.ok
# What building and `make run` need, and what the tests talk to besides (`make deps`).
RUN_PACKAGES  := pkg-config libssl-dev zlib1g-dev make curl
TEST_PACKAGES := prometheus docker-compose dovecot-imapd dovecot-lmtpd dovecot-submissiond \
                 opensmtpd chromium
# apt needs root: run as root, or have sudo.
SUDO          := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BENCH_PACKAGES := wrk jq
# Coverage-guided fuzzing (`make fuzz`): cargo-fuzz drives libFuzzer, which it builds with g++.
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ_ROOT    := $(CACHE)/cargo-fuzz-$(CARGO_FUZZ_VERSION)
CARGO_FUZZ         := $(CARGO_FUZZ_ROOT)/bin/cargo-fuzz
FUZZ_TARGETS       := api_body meta_webhook whatsapp_webhook zalo_webhook webhook_signature \
                      sms_params sms_reassembly mime_mail livechat_frame visitor_token config_file
FUZZ_SECS          ?= 60
FUZZ_SMOKE_SECS    ?= 10
FUZZ_TARGET_DIR    ?= $(CARGO_TARGET_DIR)/fuzz
# Stable Rust only (CI cannot fetch nightly), so no sanitizer: `-s none` asks for no `-Z` flag
# (cargo-fuzz's coverage instrumentation, `-Cpasses=sancov-module` and `-Cllvm-args`, is stable).
# Our crates forbid unsafe code, so AddressSanitizer would watch only dependencies' unsafe code;
# panics, broken invariants, timeouts and out-of-memory are what libFuzzer catches here.
# Release with 16 codegen units: the instrumented build of the whole dependency tree is the
# cost of a cold run, and cargo-fuzz's default of one unit per crate doubles it.
FUZZ_FLAGS         := -s none -O --codegen-units 16

export CARGO_TARGET_DIR ?= $(CURDIR)/target
export TANSU_BIN := $(TANSU)
export CARGO_TERM_COLOR ?= never

.PHONY: help deps run test lint bench build clean-run fuzz fuzz-smoke fuzz-build

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

deps: ## Install what builds and tests need (apt packages, tansu broker, Python client, Node.js example)
	$(MAKE) apt EXTRA_APT="$(TEST_PACKAGES) $(EXTRA_APT)"
	$(MAKE) $(TANSU) $(VENV)/.ok node-deps

.PHONY: apt
apt: ## Install the Debian packages building needs (root or sudo; EXTRA_APT adds more)
	@missing=""; for p in $(RUN_PACKAGES) $(EXTRA_APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ -n "$(SUDO)" ] && ! command -v sudo >/dev/null; then \
	    echo "need root to install:$$missing (run as root, install sudo, or install them yourself)" >&2; exit 1; \
	  fi; \
	  echo "installing:$$missing"; \
	  [ -e /usr/sbin/policy-rc.d ] || $(SUDO) sh -c "printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(TANSU): | apt
	@echo "building the tansu $(TANSU_VERSION) Kafka broker into $(TANSU_ROOT) (once; ~12 min cold)"
	cargo install tansu --locked --version $(TANSU_VERSION) --features dynostore,libsql --root $(TANSU_ROOT)

$(VENV)/.ok: Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check confluent-kafka kubernetes-validate pyyaml 'moto[server]'
	touch $@

.PHONY: node node-deps
node: ## Node.js and npm (Debian's, when there is no node)
	@command -v node >/dev/null && command -v npm >/dev/null || $(MAKE) apt EXTRA_APT="nodejs npm"

node-deps: $(NODE_MODULES) ## The Node.js example's packages (npm ci, again only when its lockfile changes)
	@:

# --prefer-offline takes what npm's cache (~/.npm) has; the summary line goes.
$(NODE_MODULES): examples/node/package.json examples/node/package-lock.json | node
	npm ci --prefix examples/node --prefer-offline --no-audit --no-fund --loglevel=error >/dev/null
	touch $@

build: apt ## Build the daemon (debug)
	cargo build -p omnirouter

run: apt $(TANSU) $(VENV)/.ok ## Start a local broker and the daemon with config/default.toml
	cargo build --release -p omnirouter
	TANSU=$(TANSU) OMNIROUTER=$(CARGO_TARGET_DIR)/release/omnirouter PYTHON=$(VENV)/bin/python \
	  bash deploy/local/run.sh

test: deps ## Everything: unit, property and end-to-end tests against the real broker, then the fuzz smoke run
	cargo build -p omnirouter
	cargo test --workspace --all-targets
	$(MAKE) fuzz-smoke

lint: apt ## rustfmt and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench: deps ## Ingest load test (wrk) with its references, message-to-assignment latency, one tenant's router under load, memory per agent and conversation, the load-shedding soak, the 10k idle live chat sockets test, the 50,000-conversation simulated day, and criterion benches
	$(MAKE) apt EXTRA_APT="$(BENCH_PACKAGES)"
	bash benches/ingest.sh
	cargo build --release -p omnirouter -p omni-benches --bin omnirouter --bin livechat-load
	$(CARGO_TARGET_DIR)/release/livechat-load --daemon $(CARGO_TARGET_DIR)/release/omnirouter --connections 10000
	$(CARGO_TARGET_DIR)/release/omnirouter simulate benches/simulate_day.toml > /dev/null
	cargo bench -p omni-benches

$(CARGO_FUZZ):
	cargo install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION) --root $(CARGO_FUZZ_ROOT)

fuzz-build: $(CARGO_FUZZ) ## Build the fuzz targets (instrumented, into FUZZ_TARGET_DIR, default target/fuzz)
	$(MAKE) apt EXTRA_APT=g++
	$(CARGO_FUZZ) fuzz build $(FUZZ_FLAGS) --target-dir $(FUZZ_TARGET_DIR)

fuzz: fuzz-build ## Fuzz every parser of outside bytes for FUZZ_SECS (60) s each; prints executions and coverage
	CARGO_FUZZ=$(CARGO_FUZZ) FUZZ_FLAGS="$(FUZZ_FLAGS)" FUZZ_TARGET_DIR=$(FUZZ_TARGET_DIR) \
	  bash fuzz/run.sh $(FUZZ_SECS) $(FUZZ_TARGETS)

fuzz-smoke: ## The fuzz targets for FUZZ_SMOKE_SECS (10) s each (part of `make test`)
	$(MAKE) fuzz FUZZ_SECS=$(FUZZ_SMOKE_SECS)

clean-run: ## Remove the local broker's data (.run/)
	rm -rf .run
