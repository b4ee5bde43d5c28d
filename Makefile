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
# Debian's Python, with its packages: python3-docker (make bench); python3-pytest, python3-mypy and
# python3-build (the Python client: make pytest, make wheel).
PYTHON       ?= /usr/bin/python3
PYCLIENT     ?= clients/python
# The Python client's tests need nats-py, which no Debian package holds: without it they are
# skipped, loudly. REQUIRE_PYTHON_TESTS=1 turns the skip into a failure.
REQUIRE_PYTHON_TESTS ?=
# make gobench: the Go benchmarks.
BENCH_PKGS   ?= ./pkg/worker/
BENCH        ?= .
BENCHTIME    ?= 2s
FUZZTIME     ?= 30s
RUN_ARGS     ?=

.PHONY: help build image images test pytest wheel bench gobench fuzz run clean lint

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

test: image lint ## gofmt check and go vet, then every test (needs Docker) under the race detector, then make pytest
	@[ -n "$(RACE)" ] || echo "make test: without the race detector (cgo is off, or RACE= was given)" >&2
	CODEFLEET_IMAGE=$(IMAGE) $(GO) test $(RACE) -count=1 -timeout $(TEST_TIMEOUT) $(TEST_PKGS)
	CODEFLEET_IMAGE=$(IMAGE) $(GO) test $(RACE) -count=1 -timeout $(TEST_TIMEOUT) $(INTEGRATION_PKGS)
	@$(MAKE) --no-print-directory pytest

pytest: image build ## the Python client's type check (mypy --strict) and tests, against codefleet dev on a free port (needs nats-py)
	@if $(PYTHON) -I -m mypy --version >/dev/null 2>&1; then \
		echo "mypy --strict $(PYCLIENT)/src"; cd $(PYCLIENT) && $(PYTHON) -m mypy src; \
	else \
		echo "make pytest: $(PYTHON) has no mypy (apt-get install python3-mypy): the type check of $(PYCLIENT) did not run" >&2; \
	fi
	@if ! $(PYTHON) -c 'import nats' 2>/dev/null; then \
		printf '\n%s\n%s\n%s\n\n' \
			'!!!! SKIPPED: the Python client'"'"'s tests ($(PYCLIENT)/tests) did not run.' \
			'!!!! $(PYTHON) cannot import nats (nats-py), which no Debian package holds. Put its' \
			'!!!! source on PYTHONPATH: PYTHONPATH=/path/to/nats.py/nats/src make pytest' >&2; \
		[ -z "$(REQUIRE_PYTHON_TESTS)" ] || { echo "make pytest: REQUIRE_PYTHON_TESTS is set: failing" >&2; exit 1; }; \
		exit 0; \
	fi; \
	$(PYTHON) -I -c 'import pytest' 2>/dev/null || { echo "make pytest: $(PYTHON) cannot import pytest: apt-get install python3-pytest" >&2; exit 1; }; \
	cd $(PYCLIENT) && CODEFLEET_BIN=$(abspath $(BIN))/codefleet CODEFLEET_IMAGE=$(IMAGE) PYTHONPATH=src$${PYTHONPATH:+:$$PYTHONPATH} \
		$(PYTHON) -m pytest -p no:cacheprovider -ra tests

wheel: ## build the Python client's wheel into bin/dist, offline (Debian's python3-build and python3-setuptools)
	@# -I: the repository's build/ directory would be imported as the module build.
	@$(PYTHON) -I -c 'import build' 2>/dev/null || { echo "make wheel: $(PYTHON) cannot import build: apt-get install python3-build" >&2; exit 1; }
	rm -rf $(BIN)/dist
	$(PYTHON) -I -m build --no-isolation --wheel --outdir $(abspath $(BIN))/dist $(PYCLIENT)
	rm -rf $(PYCLIENT)/build $(PYCLIENT)/src/*.egg-info

# The fleet (nats-server, dispatcher, worker as processes) beside AG2's path (docker-py's exec_run,
# Debian's python3-docker) and the docker CLI, on one daemon and image; bench/main.go says how.
bench: image ## codefleet vs docker-py vs docker exec, a few minutes: a new section in docs/benchmarks.md
	@$(PYTHON) -c 'import docker' 2>/dev/null || { echo "make bench: $(PYTHON) cannot import docker: apt-get install python3-docker" >&2; exit 1; }
	CODEFLEET_IMAGE=$(IMAGE) $(GO) run ./bench -python $(PYTHON) $(BENCH_ARGS)

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
