# jetpilot: two commands do everything on a fresh machine with only Go.
#   make run   - embedded JetStream + worker + agent simulator, one demo job, its result
#   make test  - go vet + the race-enabled test suite (what CI runs)

GO       ?= go
BIN      ?= bin/jetpilot
BENCH_BIN ?= bin/jetpilot-bench
PKGS     ?= ./...
# Seconds each fuzz target runs in `make fuzz`.
FUZZTIME ?= 60s

.PHONY: run build test vet bench fuzz fuzz-brief faults js-check schema-check clean

build:
	$(GO) build -o $(BIN) ./cmd/jetpilot

run: build
	$(BIN) dev --demo --nats-port -1

vet:
	$(GO) vet $(PKGS)

# The fault suite runs on its own after the rest: it kills and restarts
# processes against 2s deadlines and must not share the CPU with other suites.
test: vet
	$(GO) test -race -count=1 -timeout 20m $$($(GO) list ./... | grep -v /faults$$)
	$(GO) test -race -count=1 -timeout 20m ./faults/

# The benchmark harness is its own binary: nothing of it ships in $(BIN).
bench:
	$(GO) build -o $(BENCH_BIN) ./cmd/jetpilot-bench
	$(BENCH_BIN)

# The heavy fault scenarios (200 jobs per scenario); `make test` runs the same
# tests with smaller loads. Figures in RELIABILITY.md.
faults:
	JETPILOT_FAULTS=1 $(GO) test -race -count=1 -run . -v -timeout 60m ./faults/

# Each fuzz target for a few seconds: what CI runs after the tests.
# A count, not a duration: Go 1.26's fuzz coordinator can report a spurious
# "context deadline exceeded" when a wall-clock -fuzztime ends mid-input
# (golang/go#75804); a count ends cleanly. ~10 s a target on 2 cores.
fuzz-brief:
	$(MAKE) fuzz FUZZTIME=120000x

fuzz:
	$(GO) test ./schemas -run '^$$' -fuzz FuzzDecodeJob -fuzztime $(FUZZTIME)
	$(GO) test ./schemas -run '^$$' -fuzz FuzzDecodeDecision -fuzztime $(FUZZTIME)
	$(GO) test ./schemas -run '^$$' -fuzz FuzzJobFastPath -fuzztime $(FUZZTIME)
	$(GO) test ./spawn -run '^$$' -fuzz FuzzSSE -fuzztime $(FUZZTIME)
	$(GO) test ./signing -run '^$$' -fuzz FuzzVerify -fuzztime $(FUZZTIME)

# The JavaScript signer in examples/js against the signing test vector:
# another language's JCS and ed25519 must give jetpilot's bytes exactly.
# Needs node (18 or later) and npm; the packages are pinned by package-lock.json.
js-check:
	cd examples/js && npm ci --no-audit --no-fund && node sign-decision.mjs ../../schemas/examples/signing-vector.json

# Every schemas/*.v1.json compiles in Ajv's JSON Schema 2020-12 mode with
# strict: true and ajv-formats, with jetpilot's x-* annotation keywords
# registered (schemas/ajv/keywords.mjs), and every JSON example validates.
# Needs node (18 or later) and npm; the packages are pinned by package-lock.json.
schema-check:
	cd schemas/ajv && npm ci --no-audit --no-fund && node check.mjs

clean:
	rm -rf bin .jetpilot examples/js/node_modules schemas/ajv/node_modules
