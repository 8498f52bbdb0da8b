# Relay: `make run` runs a node, `make test` runs everything CI runs.
GO          ?= go
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Short fuzz passes run by make test (per target).
FUZZTIME    ?= 10s

.PHONY: all build run test deps lint unit fuzz benchsmoke bench clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o bin/relay ./cmd/relay

run:
	$(GO) run ./cmd/relay

# Installs missing packages (as root), lints, runs the whole suite under the
# race detector, then short fuzz passes.
test: deps lint unit fuzz benchsmoke

deps:
	@internal/testenv/deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

unit:
	$(GO) test -race -count=1 -shuffle=on -timeout 12m ./...

# Every Go benchmark once, so that none rots between `make bench` runs.
benchsmoke:
	$(GO) test -run '^$$' -bench . -benchtime 1x ./pubsub ./node ./node/protocol ./internal/bench

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEnvelope$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./pubsub
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeCommand$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./node/protocol
	$(GO) test -run '^$$' -fuzz '^FuzzAppendPush$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./node/protocol

# The table of docs/BENCHMARKS.md: two nodes and one redis-server on
# loopback under relay bench (internal/bench/make-bench.sh; BENCH_ROWS,
# BENCH_DURATION, BENCH_IDLE_HOLD, BENCH_OUT tune it), then the Go benchmarks.
bench: deps
	internal/bench/make-bench.sh
	$(GO) test -run '^$$' -bench . -benchmem ./pubsub ./node ./node/protocol

clean:
	rm -rf bin
