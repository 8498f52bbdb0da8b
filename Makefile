# Relay: `make run` runs a node, `make test` runs everything CI runs.
GO          ?= go
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Short fuzz passes run by make test (per target).
FUZZTIME    ?= 10s

.PHONY: all build run test deps lint unit fuzz bench clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o bin/relay ./cmd/relay

run:
	$(GO) run ./cmd/relay

# Installs missing packages (as root), lints, runs the whole suite under the
# race detector, then short fuzz passes.
test: deps lint unit fuzz

deps:
	@internal/testenv/deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

unit:
	$(GO) test -race -count=1 -shuffle=on -timeout 12m ./...

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEnvelope$$' -fuzztime $(FUZZTIME) ./pubsub

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./pubsub ./node

clean:
	rm -rf bin
