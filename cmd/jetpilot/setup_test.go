package main_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
)

func TestSetupPrintsEveryLimit(t *testing.T) {
	t.Parallel()
	s, _, _ := testnats.Start(t)
	out, code := run(t, "", "setup", "--nats", testnats.URL(s), "--jobs-max-bytes", "8MiB", "--events-max-bytes", "-1", "--audit-max-bytes", "2GiB")
	require.Equal(t, 0, code, out)
	for _, line := range []string{
		"stream JETPILOT_JOBS ready: work queue, file storage, max age none, max bytes 8MiB, discard new (a full stream refuses publishes), replicas 1, duplicate window 24h0m0s",
		"stream JETPILOT_RESULTS ready: limits, file storage, max age 168h0m0s, max bytes 1GiB, discard old, replicas 1, duplicate window 24h0m0s",
		"stream JETPILOT_APPROVALS ready: limits, file storage, max age 168h0m0s, max bytes 256MiB, discard old",
		"stream JETPILOT_DECISIONS ready: work queue, file storage, max age 168h0m0s, max bytes 64MiB, discard new",
		"stream JETPILOT_CONTROL ready: work queue, file storage, max age 168h0m0s, max bytes 64MiB, discard new",
		"stream JETPILOT_EVENTS ready: limits, file storage, max age 1h0m0s, max bytes unlimited, discard old",
		"stream JETPILOT_DEAD ready: limits, file storage, max age 720h0m0s, max bytes 1GiB, discard old",
		"stream JETPILOT_AUDIT ready: limits, file storage, max age 9600h0m0s, max bytes 2GiB, discard new (a full stream refuses publishes), replicas 1, duplicate window 24h0m0s, deny delete, deny purge\n",
		"kv bucket jetpilot_runs ready: history 1, ttl ",
		"kv bucket jetpilot_policy ready: history 16, ttl none",
		"warning: replicas 1: a lost disk or server loses the streams",
		"fsync: not visible to this NATS user",
		"acknowledged writes can be lost on power failure",
	} {
		assert.Contains(t, out, line)
	}

	assert.NotContains(t, out, "discard old, replicas 1, duplicate window 24h0m0s, deny", "only AUDIT denies deletes")

	// A bad size is a usage error that names the flag.
	out, code = run(t, "", "setup", "--nats", testnats.URL(s), "--jobs-max-bytes", "lots")
	assert.Equal(t, 2, code, out)
	_, code = run(t, "", "setup", "--nats", testnats.URL(s), "--audit-max-bytes", "0")
	assert.Equal(t, 2, code)
}
