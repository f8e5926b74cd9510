# The two commands a user needs: `make run` (the whole service locally) and `make test`.
# Both install what is missing (moto in a virtualenv, RabbitMQ from Debian), start it, and
# provision the resources declared in template.yaml.

SHELL := /bin/bash
.DEFAULT_GOAL := help

export AWS_ENDPOINT_URL ?= http://127.0.0.1:4566
export AWS_REGION ?= us-east-1
export AWS_ACCESS_KEY_ID ?= test
export AWS_SECRET_ACCESS_KEY ?= test
export DSR_VENV ?= $(HOME)/.cache/gdpr-dsr/venv
export PATH := $(DSR_VENV)/bin:$(PATH)
export RUST_LOG ?= info,aws_config=warn,aws_smithy_runtime=warn

CARGO ?= cargo
# Where cargo puts what it builds (a shared CARGO_TARGET_DIR is honoured).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: help run test token ops holder-check stack emulator venv rabbitmq chromium node provision lint stop bench chaos package cdk

help:
	@echo "make run              run the whole service locally (API on http://127.0.0.1:3000)"
	@echo "make test             run every test against the local stack"
	@echo "make token SUB=alice  print a bearer token for subject alice (last line)"
	@echo "make ops ARGS=stats   the operator CLI (dsr-ops) against the local stack"
	@echo "make holder-check SERVICE=ledger  a holder's conformance to docs/holders.md (SUBJECT=, ARGS=)"
	@echo "make lint             cargo fmt --check, clippy -D warnings, cfn-lint"
	@echo "make package          every function's bootstrap as sam build makes it (arm64), sizes checked"
	@echo "make cdk              the CDK app's template (infra/cdk), checked against template.yaml"
	@echo "make bench            every function's size, cold start, memory; the intake vs a Python peer;"
	@echo "                      report memory/time; 10,000 delayed messages (docs/performance.md)"
	@echo "make chaos            the proving ground: faults, hostile input, fuzzing (docs/reliability.md)"
	@echo "make stop             stop the emulator this project started"

stack: emulator rabbitmq

emulator:
	@infra/local/ensure-emulator.sh

venv:
	@infra/local/ensure-venv.sh

rabbitmq:
	@infra/local/ensure-rabbitmq.sh

# The CDK app (infra/cdk): Node.js and its packages.
node:
	@infra/cdk/ensure-node.sh

# The CDK app's template from the functions `make package` built, and its drift from
# template.yaml (deploy it with: cd infra/cdk && npx cdk deploy).
cdk: venv node
	infra/cdk/synth.sh

# The operations page is tested in a real browser.
chromium:
	@infra/local/ensure-chromium.sh

run: stack
	$(CARGO) build --quiet -p dsr-local
	$(TARGET_DIR)/debug/dsr-local run

provision: emulator
	$(CARGO) run --quiet -p dsr-local -- provision

token:
	@test -n "$(SUB)" || { echo "usage: make token SUB=<subject>" >&2; exit 2; }
	@$(CARGO) run --quiet -p dsr-local -- token --sub "$(SUB)"

# The operator CLI against the local stack, e.g. make ops ARGS=stats, ARGS="show <id>".
ops: emulator
	@$(CARGO) run --quiet -p dsr-ops -- --local-stack $${DSR_STACK_NAME:-dsr-local} $(ARGS)

# A holder's conformance (docs/holders.md) over the local broker; the registry from
# SERVICE_REGISTRY_FILE, e.g. SERVICE_REGISTRY_FILE=my-registry.yaml make holder-check SERVICE=ledger
holder-check:
	@test -n "$(SERVICE)" || { echo "usage: make holder-check SERVICE=<registry name> [SUBJECT=<test subject>] [ARGS=...]" >&2; exit 2; }
	$(CARGO) run --quiet -p dsr-holder-check -- --service "$(SERVICE)" $(if $(SUBJECT),--subject "$(SUBJECT)") $(ARGS)

# The bulk delayed-dispatch test (10,000 messages due at once) keeps the emulator busy for
# minutes, so it runs on its own after the parallel suite instead of slowing every other test.
BULK_TEST := ten_thousand_messages_due_at_once
# Restarts the shared RabbitMQ server: it must not run beside tests that use the broker.
RESTART_TEST := rabbitmq_restarted_in_the_middle_of_a_fan_out_of_100_erasures_loses_nothing
# The proving ground's small runs (AWS faults, duplicates and races) load the emulator for
# minutes, and their settling budgets assume they have it to themselves.
CHAOS_TESTS := chaos::
SERIAL := test($(BULK_TEST)) or test($(RESTART_TEST)) or test(/^$(CHAOS_TESTS)/)

test: stack chromium node
ifeq ($(NEXTEST),yes)
	$(CARGO) nextest run --workspace --no-fail-fast -E 'not ($(SERIAL))'
	$(CARGO) nextest run -p dsr-tests --no-fail-fast --test-threads 1 -E '$(SERIAL)'
else
	$(CARGO) test --workspace --no-fail-fast -- --skip $(BULK_TEST) --skip $(RESTART_TEST) --skip $(CHAOS_TESTS)
	$(CARGO) test -p dsr-tests --test it -- --test-threads 1 $(BULK_TEST) $(RESTART_TEST) $(CHAOS_TESTS)
endif

# The functions as Lambda runs them: sizes (arm64, as deployed), cold starts and the intake
# beside its Python peer (x86_64 builds, which this machine runs), written to
# docs/performance.md. Then the report's memory and time (20 MB, 200 MB; debug build, see
# Cargo.toml; BENCH_PROFILE=release for release) and 10,000 delayed messages due at once.
BENCH_PROFILE ?= dev
BENCH_DIR := $(TARGET_DIR)/$(if $(filter dev,$(BENCH_PROFILE)),debug,$(BENCH_PROFILE))
# The burst's size (10,000 through the local API; `make bench BURST_REQUESTS=1000` for a shorter run).
BURST_REQUESTS ?= 10000

bench: stack venv
	-PACKAGE_ARCH=arm64 infra/package.sh
	PACKAGE_ARCH=x86_64 PACKAGE_MAX_BYTES=1000000000 infra/package.sh
	$(CARGO) build --quiet --profile $(BENCH_PROFILE) -p dsr-local --bin lambda-bench --bin report-bench
	$(BENCH_DIR)/lambda-bench --binaries $(TARGET_DIR)/lambda-x86_64 --python $(DSR_VENV)/bin/python --out $(TARGET_DIR)/bench/lambda.json
	DSR_BENCH_OUT=$(TARGET_DIR)/bench $(CARGO) nextest run -p dsr-tests -E 'test(what_an_access_request_and_an_erasure_cost_in_aws_calls)'
	set -o pipefail; DSR_BENCH_OUT=$(TARGET_DIR)/bench BURST_REQUESTS=$(BURST_REQUESTS) $(CARGO) nextest run -p dsr-tests --no-capture -E 'test(/^burst::/)' 2>&1 | grep '^burst:'
	python3 infra/bench/report.py $(TARGET_DIR) docs/performance.md
	@for mb in 20 200; do $(BENCH_DIR)/report-bench $$mb; done
	@$(CARGO) nextest run -p dsr-tests -E 'test($(BULK_TEST))' --no-capture 2>&1 | grep '^bulk:' 

# Release builds of every function, one at a time as `sam build` makes them (arm64).
package: venv
	infra/package.sh

# The proving ground at full size (500 requests under 20% AWS faults, the hostile corpus, a
# broker restart mid fan-out, 10 million executions per fuzz target); loopback only, stops by
# itself. Its small runs are part of `make test`. Figures: docs/reliability.md.
chaos: stack
	infra/chaos/run.sh

lint: emulator
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cfn-lint template.yaml

stop:
	@if [ -f .local/moto.pid ]; then kill "$$(cat .local/moto.pid)" 2>/dev/null || true; rm -f .local/moto.pid; echo "moto stopped"; fi
	@echo "RabbitMQ keeps running; stop it with: rabbitmqctl stop"
