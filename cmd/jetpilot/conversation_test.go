package main_test

import (
	"encoding/json"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// submit --session-key continues a conversation; steer reaches a running
// job and refuses a finished one; a bad key is a usage error.
func TestSessionKeyAndSteerFromTheCommandLine(t *testing.T) {
	dev, url := startDev(t)

	var sessions []string
	for _, p := range []string{"#sim text first", "#sim text second"} {
		out, code := run(t, "", "submit", "--nats", url, "--wait", "--json", "--session-key", "thread-cli", "--prompt", p)
		require.Equal(t, 0, code, out)
		var res schemas.Result
		require.NoError(t, json.Unmarshal([]byte(out), &res), out)
		assert.Equal(t, "thread-cli", res.SessionKey)
		sessions = append(sessions, res.SessionID)
	}
	assert.Equal(t, sessions[0], sessions[1], "the second message continued the first one's session")

	_, code := run(t, "", "submit", "--nats", url, "--session-key", "no spaces allowed", "--prompt", "x")
	assert.Equal(t, 2, code, "a bad session_key is refused before publishing")

	out, code := run(t, "", "submit", "--nats", url, "--id", "cli-steer", "--prompt", "#sim text working\n#sim sleep 2s\n#sim tool-time 500ms\n#sim tool view {\"path\":\"/\"}\n#sim sleep 1s\n#sim text done")
	require.Equal(t, 0, code, out)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		out, _, _, err := tryRun(nil, "", "events", "cli-steer", "--nats", url)
		assert.NoError(c, err)
		assert.Contains(c, out, "working")
	}, waitFor, 50*time.Millisecond, "the job runs")
	out, code = run(t, "", "steer", "cli-steer", "also look at staging", "--nats", url)
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "steered")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		out, _, _, err := tryRun(nil, "", "results", "--nats", url, "--job", "cli-steer")
		assert.NoError(c, err)
		assert.Contains(c, out, "job cli-steer: completed")
	}, waitFor, 100*time.Millisecond)
	out, code = run(t, "", "steer", "cli-steer", "too late", "--nats", url)
	assert.Equal(t, 1, code, out)
	_, code = run(t, "", "steer", "cli-steer", "--nats", url)
	assert.Equal(t, 2, code, "TEXT is required")

	require.NoError(t, dev.Cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 0, dev.ExitCode(t, waitFor))
}
