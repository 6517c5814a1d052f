package faults

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

const (
	natsUser     = "jpworker"
	natsPassword = "nats-pw-Zq8vK2mW9xLs"
	agentToken   = "agent-tok-Hn4rT7pQ1cVb"
)

// authConfig is a nats-server authorization block with the worker user
// (everything allowed) and more users.
func authConfig(more ...string) string {
	users := append([]string{fmt.Sprintf("{user: %s, password: %q}", natsUser, natsPassword)}, more...)
	return "authorization { users = [\n" + strings.Join(users, ",\n") + "\n] }\n"
}

// TestSecretsNeverLeak runs worker processes with a NATS user and password
// (as flags, and inside the URL) and an agent token through completed,
// failed, timed-out, paused, rejected and blocked-tool jobs and a NATS
// restart, then scans every log line, result, event, approval, dead letter
// and run record for the secrets. A worker given a wrong password must not
// print it either.
func TestSecretsNeverLeak(t *testing.T) {
	ns := newNatsServer(t, natsConfig{extra: authConfig()})
	sim, simURL := agentsimtest.New(t, agentsim.Options{Token: agentToken})
	_, js := connect(t, ns.URL(), nats.UserInfo(natsUser, natsPassword))
	ctx := testsupport.Context(t, 5*time.Minute)
	require.NoError(t, queue.Setup(ctx, js, queue.Config{AckWait: 2 * time.Second}))

	dir := t.TempDir()
	env := []string{"JETPILOT_AGENT_TOKEN=" + agentToken}
	urlWithCreds := fmt.Sprintf("nats://%s:%s@127.0.0.1:%d", natsUser, natsPassword, ns.port)
	workers := []*testsupport.Proc{
		startWorker(t, workerOpts{name: "flags", natsURL: ns.URL(), agentURL: simURL, env: env,
			extra: []string{"--user", natsUser, "--password", natsPassword, "--log-level", "debug", "--log-json", filepath.Join(dir, "flags.jsonl")}}),
		startWorker(t, workerOpts{name: "url", natsURL: urlWithCreds, agentURL: simURL, env: env,
			extra: []string{"--log-level", "debug", "--log-json", filepath.Join(dir, "url.jsonl")}}),
	}
	client := queue.NewClient(js, queue.Config{})
	jobs := []schemas.Job{
		{ID: "sec-ok", Prompt: "#sim text fine\n#sim sleep 1500ms\n#sim text done"},
		{ID: "sec-fail", Prompt: "#sim text x\n#sim error kaboom"},
		{ID: "sec-timeout", Prompt: "#sim hang", Timeout: "1s"},
		{ID: "sec-pause", Prompt: "#sim tool stakpak__run_command {\"cmd\":\"ls\"}", PauseOnApproval: true},
		{ID: "sec-blocked", Prompt: "#sim tool stakpak__view {}\n#sim text ok", AllowedTools: []string{"search_docs"}},
	}
	for _, j := range jobs {
		_, err := client.Submit(ctx, j)
		require.NoError(t, err)
	}
	_, err := client.SubmitRaw(ctx, "", "sec-bad", []byte(`{"id":"sec-bad","prompt":""}`))
	require.NoError(t, err)
	// A NATS restart while sec-ok runs: reconnect logs print the server URL.
	require.Eventually(t, func() bool { return sim.ActiveRuns() > 0 }, waitFor, 5*time.Millisecond)
	ns.kill(t)
	downFor(t, time.Second)
	ns.start(t)
	for _, id := range []string{"sec-ok", "sec-fail", "sec-timeout", "sec-blocked", "sec-bad"} {
		wctx, cancel := context.WithTimeout(ctx, waitFor)
		_, err := client.WaitResult(wctx, id)
		cancel()
		require.NoError(t, err, id)
	}
	wctx, cancel := context.WithTimeout(ctx, waitFor)
	defer cancel()
	paused, _, err := client.WaitNext(wctx, "sec-pause", 0)
	require.NoError(t, err)
	require.Equal(t, schemas.StatusPaused, paused.Status)

	// A worker with a wrong password fails to start, without printing it.
	const wrong = "wrong-pw-Kd93LmQ0"
	bad := testsupport.StartProc(t, "worker wrong password", env, jpBin, "worker", "--nats",
		fmt.Sprintf("nats://%s:%s@127.0.0.1:%d", natsUser, wrong, ns.port), "--agent-url", simURL)
	assert.NotZero(t, bad.ExitCode(t, waitFor))
	assert.Contains(t, strings.ToLower(bad.Output()), "authorization", "the error says what is wrong")

	var all strings.Builder
	for _, w := range workers {
		all.WriteString(w.Output())
	}
	all.WriteString(bad.Output())
	for _, f := range []string{"flags.jsonl", "url.jsonl"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		require.NoError(t, err)
		require.NotEmpty(t, b)
		all.Write(b)
	}
	scanned := 0
	for _, stream := range []string{"JETPILOT_RESULTS", "JETPILOT_DEAD", "JETPILOT_EVENTS", "JETPILOT_APPROVALS", "KV_jetpilot_runs"} {
		var msgs []jetstream.Msg
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			var err error
			msgs, err = testsupport.ReadStream(ctx, js, stream, "")
			assert.NoError(c, err)
		}, waitFor, 100*time.Millisecond, "read %s", stream)
		require.NotEmpty(t, msgs, "%s has messages to scan", stream)
		for _, m := range msgs {
			scanned++
			all.Write(m.Data())
			for k, v := range m.Headers() {
				all.WriteString(k + ": " + strings.Join(v, ",") + "\n")
			}
		}
	}
	out := all.String()
	for name, secret := range map[string]string{"NATS password": natsPassword, "agent token": agentToken, "wrong NATS password": wrong} {
		assert.NotContains(t, out, secret, "%s leaked", name)
	}
	assert.Contains(t, out, "NATS reconnected", "the reconnect path was exercised")
	t.Logf("scanned %d bytes: %d stream messages and the output of %d worker processes", len(out), scanned, len(workers)+1)
}

// TestJobCannotWidenAllowList: a worker allowed only `view` runs jobs that
// ask for more (allowed_tools and auto_approve "all"): the extra tool is
// blocked, or waits for a human, and never runs unattended.
func TestJobCannotWidenAllowList(t *testing.T) {
	ns := newNatsServer(t, natsConfig{})
	sim, simURL := agentsimtest.New(t, agentsim.Options{})
	_, js := connect(t, ns.URL())
	startWorker(t, workerOpts{name: "strict", natsURL: ns.URL(), agentURL: simURL, extra: []string{"--allowed-tools", "view"}})
	client := queue.NewClient(js, queue.Config{})
	ctx := testsupport.Context(t, 2*time.Minute)
	tools := "#sim tool stakpak__view {}\n#sim tool stakpak__run_command {\"cmd\":\"rm -rf /\"}\n#sim text done"
	wide := &schemas.Overrides{AutoApprove: &schemas.AutoApprove{Mode: schemas.AutoApproveAll}}
	_, err := client.Submit(ctx, schemas.Job{ID: "widen-1", Prompt: tools, AllowedTools: []string{"view", "run_command", "stakpak__run_command"}, Overrides: wide})
	require.NoError(t, err)
	_, err = client.Submit(ctx, schemas.Job{ID: "widen-2", Prompt: tools, AllowedTools: []string{"view", "run_command"}, PauseOnApproval: true, Overrides: wide})
	require.NoError(t, err)

	res, err := client.WaitResult(ctx, "widen-1")
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, schemas.ToolCallCounts{Accepted: 1, Rejected: 1}, res.ToolCalls)
	decisions := sim.Decisions(res.SessionID)
	require.Len(t, decisions, 1)
	var ran []string
	for id, d := range decisions[0] {
		if d.Action == "accept" {
			ran = append(ran, id)
		} else {
			assert.Equal(t, "Blocked by profile allowed_tools (tool: run_command)", d.Content)
		}
	}
	assert.Equal(t, []string{"call_1"}, ran, "only view ran")

	paused, _, err := client.WaitNext(ctx, "widen-2", 0)
	require.NoError(t, err)
	require.Equal(t, schemas.StatusPaused, paused.Status)
	require.NotNil(t, paused.PauseReason)
	require.Len(t, paused.PauseReason.PendingToolCalls, 1, "view was accepted, run_command waits for a human")
	assert.Equal(t, "stakpak__run_command", paused.PauseReason.PendingToolCalls[0].Name)

	// The job's auto_approve never reaches the agent server: the runner
	// always sends "none" and applies the capped policy itself.
	for _, r := range sim.Requests() {
		if strings.HasSuffix(r.Path, "/messages") && r.Method == "POST" {
			assert.Contains(t, string(r.Body), `"auto_approve":"none"`)
			assert.NotContains(t, string(r.Body), `"auto_approve":"all"`)
		}
	}
}
