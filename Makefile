# codefleet: `make help` lists the targets. Variables below can be overridden: make test IMAGE=...

.DEFAULT_GOAL := build
SHELL := /usr/bin/env bash

GO           ?= go
BIN          ?= bin
# The version stamped into the binaries (var version in each cmd's main package).
VERSION      ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS      ?= -s -w -X main.version=$(VERSION)
# The sandbox image: built by scripts/sandbox-image.sh, used by the tests and by `make run`.
IMAGE        ?= $(or $(CODEFLEET_IMAGE),codefleet-sandbox:bookworm)
# The in-process tests, then the fleet-in-containers tests alone: run side by side on 2 CPUs,
# each starves the other's heartbeats.
TEST_PKGS    ?= $(shell $(GO) list ./... | grep -v /integration)
INTEGRATION_PKGS ?= ./integration/
TEST_TIMEOUT ?= 30m
# Tests run under the race detector. Measured on 2 CPUs: every package under -race takes about
# 50s against 35s without it (the Docker tests wait on containers either way), so one -race run
# of everything replaces a plain run plus a partial race run. -race needs cgo; `go env` reports
# CGO_ENABLED=0 when there is no C compiler, and the tests then run without it. RACE= disables it.
RACE         ?= $(if $(filter 1,$(shell $(GO) env CGO_ENABLED)),-race,)
# The images of the daemons (build/Dockerfile): $(IMAGES_REPO)codefleet-worker:$(IMAGES_TAG) and
# $(IMAGES_REPO)codefleet-dispatcher:$(IMAGES_TAG), e.g. make images IMAGES_REPO=registry.example/
IMAGES_TAG   ?= $(VERSION)
IMAGES_REPO  ?=
IMAGES_ARCH  ?= $(shell $(GO) env GOARCH)
REVISION     ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# make bench: the harness's flags, e.g. BENCH_ARGS='-quick -out -' (a short run, printed).
BENCH_ARGS   ?=
PYTHON_DOCKER ?= /usr/bin/python3
# make gobench: the Go benchmarks.
BENCH_PKGS   ?= ./pkg/worker/
BENCH        ?= .
BENCHTIME    ?= 2s
FUZZTIME     ?= 30s
RUN_ARGS     ?=

.PHONY: help build image images test bench gobench fuzz run clean lint

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build every command into bin/ (static: CGO_ENABLED=0)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

image: ## make sure the sandbox image exists (pull, else build from Debian packages)
	scripts/sandbox-image.sh $(IMAGE)

# The binaries are built here, for linux, and the images only copy them (FROM scratch): nothing
# is pulled, and the classic builder (no BuildKit) does it as well.
images: ## build the images codefleet-worker and codefleet-dispatcher (IMAGES_TAG, IMAGES_REPO)
	rm -rf $(BIN)/images && mkdir -p $(BIN)/images
	CGO_ENABLED=0 GOOS=linux GOARCH=$(IMAGES_ARCH) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/images/ ./cmd/worker ./cmd/dispatcher ./cmd/sandbox-agent
	for target in worker dispatcher; do \
		docker build --quiet -f build/Dockerfile --target $$target \
			--build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) \
			-t $(IMAGES_REPO)codefleet-$$target:$(IMAGES_TAG) $(BIN)/images >/dev/null || exit 1; \
		echo "built $(IMAGES_REPO)codefleet-$$target:$(IMAGES_TAG)"; \
	done

test: image lint ## gofmt check and go vet, then every test (needs Docker) under the race detector
	@[ -n "$(RACE)" ] || echo "make test: without the race detector (cgo is off, or RACE= was given)" >&2
	CODEFLEET_IMAGE=$(IMAGE) $(GO) test $(RACE) -count=1 -timeout $(TEST_TIMEOUT) $(TEST_PKGS)
	CODEFLEET_IMAGE=$(IMAGE) $(GO) test $(RACE) -count=1 -timeout $(TEST_TIMEOUT) $(INTEGRATION_PKGS)

# The fleet (nats-server, dispatcher, worker as processes) beside AG2's path (docker-py's exec_run,
# Debian's python3-docker) and the docker CLI, on one daemon and image; bench/main.go says how.
bench: image ## codefleet vs docker-py vs docker exec, a few minutes: a new section in docs/benchmarks.md
	@$(PYTHON_DOCKER) -c 'import docker' 2>/dev/null || { echo "make bench: $(PYTHON_DOCKER) cannot import docker: apt-get install python3-docker" >&2; exit 1; }
	CODEFLEET_IMAGE=$(IMAGE) $(GO) run ./bench -python $(PYTHON_DOCKER) $(BENCH_ARGS)

gobench: image ## Go benchmarks of BENCH_PKGS (BENCH=regexp, BENCHTIME=2s)
	CODEFLEET_IMAGE=$(IMAGE) $(GO) test -run '^$$' -bench '$(BENCH)' -benchmem -benchtime $(BENCHTIME) -timeout $(TEST_TIMEOUT) $(BENCH_PKGS)

fuzz: ## fuzz the run request decoder for FUZZTIME
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRunRequest$$' -fuzztime $(FUZZTIME) ./pkg/protocol/

run: image build ## a local fleet: embedded NATS, a dispatcher and a worker (codefleet dev)
	@test -x $(BIN)/codefleet || { echo "make run: $(BIN)/codefleet was not built (is cmd/codefleet there?)" >&2; exit 1; }
	CODEFLEET_AGENT=$(abspath $(BIN))/sandbox-agent CODEFLEET_IMAGE=$(IMAGE) $(BIN)/codefleet dev $(RUN_ARGS)

clean: ## remove bin/
	rm -rf $(BIN)

lint: ## gofmt check and go vet
	@files="$$(gofmt -l .)"; if [ -n "$$files" ]; then echo "gofmt -l: these files need gofmt -w:" >&2; echo "$$files" >&2; exit 1; fi
	$(GO) vet ./...
