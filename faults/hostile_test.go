package faults

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

// peakRSS is a process's peak resident set size (VmHWM), in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	require.FailNow(t, "no VmHWM in /proc status")
	return 0
}

// TestHostileAgentServerBoundedMemory: an agent server that sends tens of
// MB of text, frames over the cap and a flood of tiny events. The worker
// keeps a bounded tail of each run's text, so its peak RSS stays far below
// what the text would take; every job gets its one result.
func TestHostileAgentServerBoundedMemory(t *testing.T) {
	textMB := load(20, 80)
	started := time.Now()
	ns := newNatsServer(t, natsConfig{})
	sim, simURL := agentsimtest.New(t, agentsim.Options{})
	_, js := connect(t, ns.URL())
	ctx := testsupport.Context(t, 10*time.Minute)
	require.NoError(t, queue.Setup(ctx, js, queue.Config{AckWait: 2 * time.Second}))
	w := startWorker(t, workerOpts{name: "hostile", natsURL: ns.URL(), agentURL: simURL, extra: []string{"--concurrency", "4"}})
	baseline := peakRSS(t, w.Cmd.Process.Pid)

	client := queue.NewClient(js, queue.Config{})
	jobs := map[string]string{
		"hostile-text":   fmt.Sprintf("#sim bigtext %d\n#sim text THE END", textMB<<20),
		"hostile-frames": "#sim bigframe 9000000\n#sim bigframe 9000000\n#sim text after the frames",
		"hostile-flood":  "#sim text-stream " + strings.Repeat("flood ", load(20000, 80000)) + "\n#sim text flood over",
	}
	for id, prompt := range jobs {
		_, err := client.Submit(ctx, schemas.Job{ID: id, Prompt: prompt, Timeout: "10m"})
		require.NoError(t, err)
	}
	for id := range jobs {
		res, err := client.WaitResult(ctx, id)
		require.NoError(t, err, id)
		assert.Equal(t, schemas.StatusCompleted, res.Status, "%s: %+v", id, res.Error)
		assert.LessOrEqual(t, len(res.Stdout), 256<<10, id)
		t.Logf("%s: %s in %dms, warnings %q, rss now %d MiB", id, res.Status, res.DurationMS, res.Warnings, peakRSS(t, w.Cmd.Process.Pid)>>20)
	}
	peak := peakRSS(t, w.Cmd.Process.Pid)
	t.Logf("worker peak RSS %d MiB (at start %d MiB) after %d MiB of agent text", peak>>20, baseline>>20, textMB)
	// The bound: the text kept per run (256 KiB) and the SSE frame cap
	// (8 MiB) per stream, not the text sent; 80 MB of text once took a
	// worker to 398 MB.
	assert.Less(t, peak, int64(200<<20), "peak RSS stays bounded")
	assert.Equal(t, len(jobs), sim.RunsStarted())
	report(t, figures{
		Scenario: "13. hostile agent server", Jobs: len(jobs), MaxRuns: 1, MinRuns: 1,
		Load:    fmt.Sprintf("3 jobs: %d MiB of text in 1 KiB deltas; two 9 MB frames (over the 8 MiB cap); a flood of ~5-byte deltas; 1 worker process x 4", textMB),
		Faults:  fmt.Sprintf("worker peak RSS %d MiB (%d MiB at start); every result at most 256 KiB of text, its end kept", peak>>20, baseline>>20),
		Elapsed: time.Since(started), Command: "go test -race -run TestHostileAgentServerBoundedMemory -v ./faults/",
	})
}
