package main_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

// readmeAuthorization is the nats-server authorization block the README's
// Permissions section shows.
func readmeAuthorization(t *testing.T) string {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	require.NoError(t, err)
	text := string(readme)
	_, section, ok := strings.Cut(text, "\n## Permissions\n")
	require.True(t, ok, "README has a Permissions section")
	_, block, ok := strings.Cut(section, "```\nauthorization {")
	require.True(t, ok, "the section shows an authorization block")
	block, _, ok = strings.Cut(block, "\n```")
	require.True(t, ok)
	return "authorization {" + block + "\n"
}

// TestREADMEPermissions runs every party of the README's Permissions
// section as its NATS user, with the configuration shown there: the admin
// sets up, a worker runs jobs, a producer submits, reads and cancels, an
// approvers' bot answers an approval; and none of them may publish where the
// section says it must not.
func TestREADMEPermissions(t *testing.T) {
	pw := map[string]string{"admin": "pw-admin-1", "worker": "pw-worker-2", "producer": "pw-producer-3", "approver-bot": "pw-bot-4"}
	t.Setenv("JETPILOT_ADMIN_PASSWORD", pw["admin"])
	t.Setenv("JETPILOT_WORKER_PASSWORD", pw["worker"])
	t.Setenv("JETPILOT_PRODUCER_PASSWORD", pw["producer"])
	t.Setenv("JETPILOT_BOT_PASSWORD", pw["approver-bot"])
	dir := t.TempDir()
	conf := filepath.Join(dir, "nats.conf")
	require.NoError(t, os.WriteFile(conf, []byte("listen: 127.0.0.1:-1\njetstream { store_dir: \""+filepath.Join(dir, "js")+"\" }\n"+
		readmeAuthorization(t)), 0o600))
	opts, err := server.ProcessConfigFile(conf)
	require.NoError(t, err)
	opts.NoSigs, opts.NoLog = true, true
	s, err := server.NewServer(opts)
	require.NoError(t, err)
	s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	require.True(t, s.ReadyForConnections(10*time.Second))
	url := s.ClientURL()
	as := func(user string, args ...string) []string {
		f := filepath.Join(dir, user+".pw")
		require.NoError(t, os.WriteFile(f, []byte(pw[user]), 0o600))
		return append(args, "--nats", url, "--user", user, "--password-file", f)
	}

	out, code := run(t, "", as("admin", "setup")...)
	require.Equal(t, 0, code, out)
	// The policy admin stores jetpilot dev's policy: every call runs
	// unless the job narrows it, decisions unsigned.
	pol := filepath.Join(dir, "policy.json")
	require.NoError(t, os.WriteFile(pol, []byte(`{"version":1,"decisions":"unsigned","tools":{"default":"allow"}}`), 0o600))
	out, code = run(t, "", as("admin", "policy", "set", pol)...)
	require.Equal(t, 0, code, out)
	_, simURL := agentsimtest.New(t, agentsim.Options{})
	w := start(t, nil, as("worker", "worker", "--agent-url", simURL)...)
	require.Eventually(t, func() bool { return strings.Contains(w.Output(), "worker started") }, waitFor, 20*time.Millisecond)

	out, code = run(t, "", as("producer", "submit", "--id", "perm-1", "--prompt", "#sim text fine", "--wait")...)
	assert.Equal(t, 0, code, out)
	out, code = run(t, "", as("producer", "submit", "--id", "perm-2", "--wait", "--pause-on-approval",
		"--prompt", "#sim tool stakpak__run_command {\"command\":\"deploy\"}\n#sim text shipped")...)
	require.Equal(t, 10, code, out)
	out, code = run(t, "", as("approver-bot", "approvals", "--json")...)
	require.Equal(t, 0, code, out)
	var a schemas.ApprovalRequest
	require.NoError(t, json.NewDecoder(strings.NewReader(out)).Decode(&a), out)
	out, code = run(t, "", as("approver-bot", "approve", a.ApprovalID, "--allow", "--by", "alice")...)
	require.Equal(t, 0, code, out)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		out, stderr, _, err := tryRun(nil, "", as("producer", "results", "--job", "perm-2")...)
		assert.NoError(c, err, stderr)
		assert.Contains(c, out, "job perm-2: completed")
	}, waitFor, 100*time.Millisecond)
	out, code = run(t, "", as("producer", "events", "perm-2")...)
	assert.Equal(t, 0, code, out)
	assert.Contains(t, out, "approval_decided")
	out, code = run(t, "", as("approver-bot", "events", "perm-2")...)
	assert.Equal(t, 0, code, out)

	out, code = run(t, "", as("producer", "submit", "--id", "perm-3", "--pause-on-approval",
		"--prompt", "#sim tool stakpak__run_command {\"command\":\"deploy\"}")...)
	require.Equal(t, 0, code, out)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		out, _, _, err := tryRun(nil, "", as("producer", "results", "--job", "perm-3")...)
		assert.NoError(c, err)
		assert.Contains(c, out, "job perm-3: paused")
	}, waitFor, 100*time.Millisecond)
	out, code = run(t, "", as("producer", "cancel", "perm-3")...)
	assert.Equal(t, 0, code, out)
	assert.Contains(t, out, "cancelling")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		out, _, _, err := tryRun(nil, "", as("producer", "results", "--job", "perm-3")...)
		assert.NoError(c, err)
		assert.Contains(c, out, "job perm-3: cancelled")
	}, waitFor, 100*time.Millisecond)
	assert.NotContains(t, w.Output(), "lacks a permission", "the worker was refused nothing")

	// What each party must not publish is refused by the server.
	refused := func(user, subject string) {
		t.Helper()
		var mu sync.Mutex
		var got error
		nc, err := nats.Connect(url, nats.UserInfo(user, pw[user]), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			mu.Lock()
			defer mu.Unlock()
			got = err
		}))
		require.NoError(t, err)
		defer nc.Close()
		require.NoError(t, nc.Publish(subject, []byte("{}")))
		require.Eventually(t, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return errors.Is(got, nats.ErrPermissionViolation)
		}, waitFor, 10*time.Millisecond, "%s may not publish on %s", user, subject)
	}
	for _, subject := range []string{"jetpilot.control.perm-3", "jetpilot.results.perm-3", "jetpilot.approvals.perm-3",
		"jetpilot.events.perm-3", "jetpilot.dead.perm-3", "jetpilot.audit.perm-3", "jetpilot.decisions.perm-3",
		"$KV.jetpilot_runs.perm-3", "$KV.jetpilot_policy.policy", "$JS.API.STREAM.DELETE.JETPILOT_RESULTS"} {
		refused("producer", subject)
	}
	for _, subject := range []string{"jetpilot.jobs.default", "jetpilot.control.perm-3", "jetpilot.results.perm-3",
		"$KV.jetpilot_runs.perm-3", "$JS.API.STREAM.PURGE.JETPILOT_APPROVALS"} {
		refused("approver-bot", subject)
	}
	for _, subject := range []string{"jetpilot.jobs.default", "jetpilot.decisions.perm-3", "$KV.jetpilot_policy.policy",
		"$JS.API.STREAM.DELETE.JETPILOT_AUDIT", "$JS.API.STREAM.PURGE.JETPILOT_RESULTS", "$JS.API.STREAM.MSG.DELETE.KV_jetpilot_policy"} {
		refused("worker", subject)
	}
}
