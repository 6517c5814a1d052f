package faults

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
)

// Binaries built once by TestMain.
var (
	natsBin string // the real nats-server
	jpBin   string // jetpilot
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "jetpilot-faults-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults: temp dir:", err)
		os.Exit(1)
	}
	natsBin = filepath.Join(dir, "nats-server")
	jpBin = filepath.Join(dir, "jetpilot")
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, b := range []struct{ out, pkg string }{
		{natsBin, "github.com/nats-io/nats-server/v2"},
		{jpBin, "github.com/jetpilot-dev/jetpilot/cmd/jetpilot"},
	} {
		wg.Go(func() { errs[i] = testsupport.Build(b.out, b.pkg, false) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// heavy reports whether the heavy loads were asked for (make faults).
func heavy() bool { return os.Getenv("JETPILOT_FAULTS") == "1" }

// load picks the job count for the mode.
func load(short, full int) int {
	if heavy() {
		return full
	}
	return short
}

// waitFor bounds every single wait; generous for -race on 2 cores.
const waitFor = 90 * time.Second

// workerOpts are the flags of one jetpilot worker process.
type workerOpts struct {
	name     string
	natsURL  string
	agentURL string
	extra    []string // more flags
	env      []string
}

// startWorker runs `jetpilot worker` with short AckWait and grace so a
// killed worker's jobs come back fast, and waits until it pulls jobs.
func startWorker(t *testing.T, o workerOpts) *testsupport.Proc {
	t.Helper()
	args := []string{"worker", "--nats", o.natsURL, "--agent-url", o.agentURL, "--name", o.name,
		"--ack-wait", "2s", "--shutdown-grace", "1s"}
	args = append(args, o.extra...)
	if !slices.Contains(o.extra, "--allowed-tools") && !slices.Contains(o.extra, "--user") && !slices.Contains(o.extra, "--tlsca") && !strings.Contains(o.natsURL, "@") {
		_, js := connect(t, strings.Split(o.natsURL, ",")[0])
		storeDevPolicy(t, js)
	}
	p := testsupport.StartProc(t, "worker "+o.name, o.env, jpBin, args...)
	require.Eventually(t, func() bool {
		return strings.Contains(p.Output(), "worker started") || !p.Running()
	}, waitFor, 20*time.Millisecond, "worker %s starts", o.name)
	require.True(t, p.Running(), "worker %s exited at start:\n%s", o.name, p.Output())
	return p
}

// figures are one scenario's measured outcome, for RELIABILITY.md.
type figures struct {
	Scenario   string
	Load       string
	Faults     string
	Jobs       int
	Lost       int
	Duplicates int
	Hung       int // jobs with no final result within the scenario's bound
	MaxRuns    int // most agent runs started for one job
	MinRuns    int // fewest agent runs started for one job
	Reattached int // jobs finished by a later delivery
	Elapsed    time.Duration
	Command    string
}

// report logs the figures and, with JETPILOT_FAULTS_REPORT set, appends them
// to that file as a Markdown table row.
func report(t *testing.T, f figures) {
	t.Helper()
	mode := "short"
	if heavy() {
		mode = "heavy"
	}
	runs := strconv.Itoa(f.MaxRuns)
	if f.MinRuns != f.MaxRuns {
		runs = fmt.Sprintf("%d-%d", f.MinRuns, f.MaxRuns)
	}
	row := fmt.Sprintf("| %s | %s | %s | %s | %d | %d | %d | %s | %d | %s | `%s` |",
		f.Scenario, mode, f.Load, f.Faults, f.Lost, f.Duplicates, f.Hung, runs, f.Reattached,
		f.Elapsed.Round(100*time.Millisecond), f.Command)
	t.Log("FIGURES " + row)
	if path := os.Getenv("JETPILOT_FAULTS_REPORT"); path != "" {
		fh, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		require.NoError(t, err)
		defer fh.Close()
		_, err = fmt.Fprintln(fh, row)
		require.NoError(t, err)
	}
}

// storeDevPolicy stores jetpilot dev's policy unless one is stored already: the scenarios are about the queue and the agent
// server, so every call runs (a job's own lists and pause_on_approval
// still apply) and decisions are unsigned, as under jetpilot dev. The
// policy scenarios store their own first.
func storeDevPolicy(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	ctx := testsupport.Context(t, waitFor)
	cfg := queue.Config{}
	require.NoError(t, queue.EnsurePolicyBucket(ctx, js, cfg))
	store, err := queue.NewPolicyStore(ctx, js, cfg)
	require.NoError(t, err)
	doc := []byte(`{"version":1,"decisions":"unsigned","tools":{"default":"allow"}}`)
	if _, err := store.Set(ctx, doc, queue.IfVersion(0)); err != nil && !errors.Is(err, queue.ErrPolicyConflict) {
		require.NoError(t, err)
	}
}
