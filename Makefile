# Relay: `make run` runs a node, `make test` runs everything CI runs.
GO          ?= go
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Short fuzz passes run by make test (per target): a count of executions,
# since a time bound can end a worker mid-run and fail with "context
# deadline exceeded".
FUZZTIME    ?= 100000x

.PHONY: all build run test deps lint unit soak fuzz benchsmoke deploy-check browser-check compose-e2e bench vulncheck clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o bin/relay ./cmd/relay

run:
	$(GO) run ./cmd/relay

# Installs missing packages (as root), lints, checks for known
# vulnerabilities, runs the whole suite under the race detector, then short
# fuzz passes.
test: deps lint vulncheck unit fuzz benchsmoke deploy-check browser-check compose-e2e

deps:
	@internal/testenv/deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...
	@# `go run ./cmd/relay` is for every laptop, not only Linux ones; the
	@# tests and their harness build there too.
	GOOS=darwin $(GO) vet ./...
	GOOS=windows $(GO) vet ./...

unit:
	$(GO) test -race -count=1 -shuffle=on -timeout 12m ./...

# The soak test of docs/RELIABILITY.md for longer than the 60 s of make
# test: three nodes under mixed traffic, then heap, goroutines and fds back
# to baseline. SOAK sets the duration.
SOAK ?= 10m
soak: deps
	RELAY_SOAK=$(SOAK) $(GO) test -race -count=1 -run '^TestSoak$$' -timeout 0 -v ./cmd/relay

# The deployment files: kustomize renders of k8s/ strict-decoded into
# k8s.io/api types, docker-compose.yml validated by compose-go. A Go module
# of its own (internal/deploytest), so the service's go.mod stays small;
# -count=1 because the test cache does not see edits to the YAML files.
deploy-check:
	cd internal/deploytest && $(GO) vet ./... && $(GO) vet -tags compose ./... && $(STATICCHECK) -tags compose ./...
	cd internal/deploytest && $(GO) test -count=1 ./...

# relay.js and the demo page in headless Chromium (Debian's chromium, which
# make deps installs): pages on two relay processes and one redis-server
# chat, one node restarts, shared tabs hold one connection. A Go module of
# its own (internal/browsertest), so chromedp stays out of the service's
# go.mod. Screenshots of the page go to bin/browsertest/.
browser-check:
	cd internal/browsertest && $(GO) vet ./... && $(STATICCHECK) ./...
	cd internal/browsertest && RELAY_ARTIFACTS_DIR=$(CURDIR)/bin/browsertest $(GO) test -race -count=1 -timeout 10m ./...
	@echo "browser-check: screenshots in bin/browsertest/"

# The README's `docker-compose up --build` on the real Dockerfile and
# docker-compose.yml, with locally built stand-ins tagged under the upstream
# image names (no registry is needed): three nodes behind nginx, the
# monitoring profile's Prometheus scraping them, a node and Redis stopped
# and started. Installs Docker, docker-compose and debootstrap when missing
# (as root).
compose-e2e:
	internal/deploytest/prepare.sh
	cd internal/deploytest && $(GO) test -tags compose -count=1 -run TestComposeE2E -timeout 25m -v ./...

# Every Go benchmark once, so that none rots between `make bench` runs.
benchsmoke:
	$(GO) test -run '^$$' -bench . -benchtime 1x ./pubsub ./node ./node/protocol ./node/auth ./internal/bench

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEnvelope$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./pubsub
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeCommand$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./node/protocol
	$(GO) test -run '^$$' -fuzz '^FuzzAppendPush$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./node/protocol
	$(GO) test -run '^$$' -fuzz '^FuzzValidChannel$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./node/protocol
	$(GO) test -run '^$$' -fuzz '^FuzzParseHeader$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./internal/wsclient
	$(GO) test -run '^$$' -fuzz '^FuzzFraming$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./node/internal/wsout
	$(GO) test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./node/auth

# The table of docs/BENCHMARKS.md: two nodes and one redis-server on
# loopback under relay bench (internal/bench/make-bench.sh; BENCH_ROWS,
# BENCH_DURATION, BENCH_IDLE_HOLD, BENCH_OUT tune it), then the Go benchmarks.
bench: deps
	internal/bench/make-bench.sh
	$(GO) test -run '^$$' -bench . -benchmem ./pubsub ./node ./node/protocol

# govulncheck, pinned, against a vulnerability database built from the
# golang.org/x/vulndb module (its data/osv, indexed by its cmd/indexdb):
# both come through the Go module proxy, so this works where vuln.go.dev
# cannot be reached. VULNDB_VERSION pins the database (so make test's
# answer depends on the change, not on the day): raise it for newer
# reports. internal/vulncheck reads govulncheck's findings: one that the
# code calls in a module go.mod requires fails; one in the standard
# library, which is the toolchain's, is a warning naming the Go release
# that fixes it (docs/OPERATIONS.md, "Vulnerabilities").
GOVULNCHECK_VERSION ?= v1.9.0
VULNDB_VERSION      ?= v0.0.0-20261105234957-e22db6528018
VULNDB              := bin/vulndb/$(VULNDB_VERSION)
vulncheck:
	@if [ ! -f $(VULNDB)/index/db.json ]; then \
		set -e; osv=$$($(GO) mod download -json golang.org/x/vulndb@$(VULNDB_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p')/data/osv; \
		echo "vulncheck: indexing $$osv into $(VULNDB)"; rm -rf bin/vulndb; \
		$(GO) run golang.org/x/vulndb/cmd/indexdb@$(VULNDB_VERSION) -vulns "$$osv" -out $(VULNDB); fi
	@mkdir -p bin
	$(GO) run golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION) -db file://$(CURDIR)/$(VULNDB) -format json ./... > bin/vulncheck.json
	$(GO) run ./internal/vulncheck < bin/vulncheck.json

clean:
	rm -rf bin
