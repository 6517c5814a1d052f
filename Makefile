# jetpilot: two commands do everything on a fresh machine with only Go.
#   make run   - embedded JetStream + worker + agent simulator, one demo job, its result
#   make test  - go vet + the race-enabled test suite (what CI runs)

GO       ?= go
BIN      ?= bin/jetpilot
PKGS     ?= ./...
# Seconds each fuzz target runs in `make fuzz`.
FUZZTIME ?= 60s

.PHONY: run build test vet bench fuzz faults clean

build:
	$(GO) build -o $(BIN) ./cmd/jetpilot

run: build
	$(BIN) dev --demo

vet:
	$(GO) vet $(PKGS)

test: vet
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

bench: build
	$(BIN) bench

fuzz:
	$(GO) test ./schemas -run '^$$' -fuzz FuzzDecodeJob -fuzztime $(FUZZTIME)
	$(GO) test ./schemas -run '^$$' -fuzz FuzzDecodeDecision -fuzztime $(FUZZTIME)
	$(GO) test ./spawn -run '^$$' -fuzz FuzzSSE -fuzztime $(FUZZTIME)

clean:
	rm -rf bin .jetpilot
