# cachet — every target installs what it needs first; `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := $(CURDIR)/.tools/bin
GRPCURL_VERSION := v1.9.3
BUF_VERSION := v1.75.0
GHZ_VERSION := v0.120.0
HELM_VERSION := v3.22.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GO_CLIENT := clients/go
TS_CLIENT := clients/typescript
TS_DEPS := $(TS_CLIENT)/node_modules/.installed
JAVA_CLIENT := clients/java
# Maven's local repository holds the Java client's dependencies; the stamp says they were fetched.
JAVA_DEPS := $(JAVA_CLIENT)/target/.deps-fetched
MVN := mvn -B -ntp -f $(JAVA_CLIENT)
# What grpcurl -protoset reads: every proto of protos/ with its imports and comments.
# buf writes the same bytes from the same sources, so check-generated can compare them.
PROTOSET := protos/cachet.protoset
BUILD_PROTOSET = $(TOOLS)/buf build --as-file-descriptor-set -o "$(1)\#format=binpb"
# The contract as it was last released on purpose: `buf breaking` compares protos/ to it.
PROTO_BASELINE := protos/baseline.binpb
# buf.gen.yaml runs these local plugins for the Go and TypeScript clients.
CODEGEN := $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc $(TS_DEPS)
export PATH := $(CURDIR)/$(VENV)/bin:$(TOOLS):$(PATH)

.PHONY: help setup redis tools maven java-deps run test test-clients test-java test-fuzz-long lint proto proto-baseline check-generated bench reliability clean

help: ## List every target with one line each
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: $(VENV)/.installed redis tools $(TS_DEPS) $(JAVA_DEPS) ## Install everything: venv with pinned deps, redis-server, grpcurl, buf, npm and Maven deps

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e 'clients/python[msgpack]' -e '.[dev]'
	touch $@

redis: ## Install redis-server and redis-sentinel (apt-get) when missing
	@if ! command -v redis-server >/dev/null || ! command -v redis-sentinel >/dev/null; then \
	  echo "installing redis-server and redis-sentinel"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-sentinel >/dev/null; \
	  systemctl stop redis-server redis-sentinel >/dev/null 2>&1 || true; \
	fi

tools: $(TOOLS)/grpcurl $(TOOLS)/buf $(TOOLS)/helm $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc ## Install pinned grpcurl, buf, helm and protoc plugins with `go install`

$(TOOLS)/grpcurl:
	GOBIN=$(TOOLS) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

$(TOOLS)/buf:
	GOBIN=$(TOOLS) go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)

$(TOOLS)/helm:
	GOBIN=$(TOOLS) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

$(TS_DEPS): $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund
	touch $@

maven: ## Install Maven (apt-get) when missing; the Java client needs it and a JDK 17
	@if ! command -v mvn >/dev/null; then \
	  echo "installing maven and openjdk-17-jdk-headless"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven openjdk-17-jdk-headless >/dev/null; \
	fi

java-deps: $(JAVA_DEPS) ## Fetch the Java client's Maven dependencies, plugins and protoc binaries (then it builds offline)

# A build without tests loads every plugin of the lifecycle (and the protoc binaries);
# go-offline adds the declared plugins the build itself does not run (clean, install).
$(JAVA_DEPS): $(JAVA_CLIENT)/pom.xml | maven
	$(MVN) -q -DskipTests dependency:go-offline verify
	touch $@

run: $(VENV)/.installed redis ## Serve on localhost:50051 (embedded redis-server unless CACHET_REDIS_URL is set; auth off)
	CACHET_AUTH__MODE=$${CACHET_AUTH__MODE:-off} $(VENV)/bin/cachet-server

test: setup ## Run every test against real redis-server processes (Python, then the Go, TS and Java clients)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-clients

test-fuzz-long: setup ## Fuzz every RPC with 3,000 generated requests each (the default run uses 200)
	CACHET_FUZZ_EXAMPLES=3000 $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py -o timeout=7200

test-clients: $(VENV)/.installed redis $(TS_DEPS) $(JAVA_DEPS) ## Test the TypeScript, Go and Java clients against a live cachet server
	cd $(TS_CLIENT) && npm test
	cd $(GO_CLIENT) && go test -count=1 ./... # never cached: the tests run a live server the cache cannot see
	$(MAKE) --no-print-directory test-java

test-java: $(VENV)/.installed redis $(JAVA_DEPS) ## Build the Java client (stubs from protos/) and run its JUnit tests against a live server
	$(MVN) verify

lint: setup ## ruff, mypy (strict on server/ and clients/python/), buf lint, helm lint, go vet, tsc
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(TOOLS)/buf lint
	$(TOOLS)/buf breaking --against $(PROTO_BASELINE)
	$(TOOLS)/helm lint --strict helm/cachet -f helm/cachet/ci/lint-values.yaml
	@unformatted=$$(gofmt -l $(GO_CLIENT) bench/driver) && test -z "$$unformatted" || { echo "gofmt needed: $$unformatted"; exit 1; }
	cd $(GO_CLIENT) && go vet ./...
	cd bench/driver && go vet ./...
	cd $(TS_CLIENT) && npm run --silent typecheck

proto: $(VENV)/.installed $(CODEGEN) $(JAVA_DEPS) ## Regenerate the Python, Go, TypeScript (committed) and Java (built, in target/) stubs from protos/
	$(PY) scripts/gen_protos.py
	$(TOOLS)/buf generate
	$(MVN) -q generate-sources
	$(call BUILD_PROTOSET,$(PROTOSET))

proto-baseline: $(TOOLS)/buf ## Accept today's protos/ as the contract `buf breaking` guards (only on purpose: a release)
	$(TOOLS)/buf build --exclude-source-info -o $(PROTO_BASELINE)

check-generated: $(VENV)/.installed $(CODEGEN) $(JAVA_DEPS) ## Fail when the generated code is stale (Java's is never committed: check none is)
	@tmp=$$(mktemp -d) && $(PY) scripts/gen_protos.py $$tmp/proto 2>/dev/null && \
	  $(TOOLS)/buf generate -o $$tmp && \
	  diff -r -x __pycache__ $$tmp/proto clients/python/cachet_client/proto && \
	  diff -r $$tmp/$(GO_CLIENT)/gen $(GO_CLIENT)/gen && \
	  diff -r $$tmp/$(TS_CLIENT)/src/gen $(TS_CLIENT)/src/gen && \
	  $(call BUILD_PROTOSET,$$tmp/cachet.protoset) && cmp $$tmp/cachet.protoset $(PROTOSET) && rm -rf $$tmp && echo "generated code is up to date" || \
	  { echo "generated code is stale: run 'make proto' and commit"; exit 1; }
	@tracked=$$(git ls-files -- $(JAVA_CLIENT)/target '$(JAVA_CLIENT)/*Grpc.java') && test -z "$$tracked" || \
	  { echo "the Java stubs are built from protos/, never committed; remove: $$tracked"; exit 1; }
	@$(MVN) -q generate-sources && echo "the Java stubs generate from protos/"

reliability: setup ## Run the fault and hostile-tenant tests and regenerate docs/reliability.md
	rm -rf build/reliability
	$(PY) -m pytest -q -p no:cacheprovider -m reliability tests/test_faults.py $(PYTEST_ARGS)
	CACHET_TEST_TOPOLOGIES=standalone $(PY) -m pytest -q -p no:cacheprovider tests/test_hostile_tenant.py $(PYTEST_ARGS)
	$(PY) scripts/reliability_report.py

# The bench's own binaries (ghz, envoyproxy/ratelimit, the Go driver) live in the
# worktree's build/, built from pinned versions by `go install`.
BENCH_BIN := build/bench/bin
ENVOY_RATELIMIT_VERSION := v1.4.1-0.20260122083618-3fb702589d36
BENCH_TOOLS := $(BENCH_BIN)/ghz $(BENCH_BIN)/ratelimit $(BENCH_BIN)/cachet-bench-driver

bench: setup $(BENCH_TOOLS) ## Benchmark cachet against its baselines (3 repeats of 3 s per row; BENCH_ARGS=--short: one pass of 1.5 s); writes bench/results/
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/near_cache.py

$(BENCH_BIN)/ghz:
	GOBIN=$(CURDIR)/$(BENCH_BIN) go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

$(BENCH_BIN)/ratelimit:
	GOBIN=$(CURDIR)/$(BENCH_BIN) go install github.com/envoyproxy/ratelimit/src/service_cmd@$(ENVOY_RATELIMIT_VERSION)
	mv $(BENCH_BIN)/service_cmd $@
	echo $(ENVOY_RATELIMIT_VERSION) > $(BENCH_BIN)/ratelimit.version

$(BENCH_BIN)/cachet-bench-driver: bench/driver/main.go bench/driver/go.mod $(GO_CLIENT)/gen/cachet/cache/v1/cache_grpc.pb.go
	cd bench/driver && go build -o $(CURDIR)/$@ .

clean: ## Remove the venv, tools and caches
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache $(JAVA_CLIENT)/target
