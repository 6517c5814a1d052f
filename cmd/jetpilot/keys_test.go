package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/signing"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

// newKey runs `keys new --out FILE` and returns the file and public key.
func newKey(t *testing.T) (file, pub string) {
	t.Helper()
	file = filepath.Join(t.TempDir(), "approver.nk")
	stdout, stderr, code, err := tryRun(nil, "", "keys", "new", "--out", file)
	require.NoError(t, err)
	require.Equal(t, 0, code, stderr)
	return file, strings.TrimSpace(stdout)
}

func TestKeysNewAndPub(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "alice.nk")
	stdout, stderr, code, err := tryRun(nil, "", "keys", "new", "--out", file)
	require.NoError(t, err)
	require.Equal(t, 0, code, stderr)

	// stdout is the public key and nothing else; the seed is in the file
	// only, readable by its owner only.
	pub := strings.TrimSuffix(stdout, "\n")
	assert.True(t, nkeys.IsValidPublicUserKey(pub), "stdout is one user public key: %q", stdout)
	assert.Contains(t, stderr, file)
	st, err := os.Stat(file)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	seed := strings.TrimSpace(string(data))
	require.True(t, strings.HasPrefix(seed, "SU"), "a user seed")
	assert.NotContains(t, stdout+stderr, seed, "the seed is never printed")
	got, err := signing.PublicKey([]byte(seed))
	require.NoError(t, err)
	assert.Equal(t, pub, got)

	// An existing file is never overwritten.
	stdout, stderr, code, err = tryRun(nil, "", "keys", "new", "--out", file)
	require.NoError(t, err)
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "already exists")
	assert.Empty(t, stdout)
	again, err := os.ReadFile(file)
	require.NoError(t, err)
	assert.Equal(t, data, again)

	// keys pub prints the public key of a seed file.
	out, code := run(t, "", "keys", "pub", file)
	require.Equal(t, 0, code)
	assert.Equal(t, pub+"\n", out)

	// The same seed with CRLF line ends and indented, or in a .creds
	// file, is the same key.
	for name, content := range map[string]string{
		"crlf": "\r\n  " + seed + "\r\n",
		"creds": "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.e30.sig\n------END NATS USER JWT------\n\n" +
			"-----BEGIN USER NKEY SEED-----\n" + seed + "\n------END USER NKEY SEED------\n",
	} {
		f := filepath.Join(dir, name+".nk")
		require.NoError(t, os.WriteFile(f, []byte(content), 0o600))
		out, code := run(t, "", "keys", "pub", f)
		require.Equal(t, 0, code, name)
		assert.Equal(t, pub+"\n", out, name)
	}

	// A seed file others may read is refused, as ssh refuses a private key.
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o602} {
		require.NoError(t, os.Chmod(file, mode))
		stdout, stderr, code, err = tryRun(nil, "", "keys", "pub", file)
		require.NoError(t, err)
		assert.Equal(t, 1, code, "mode %04o", mode)
		assert.Contains(t, stderr, "accessible by others")
		assert.Contains(t, stderr, "chmod 600 "+file)
		assert.Empty(t, stdout)
		assert.NotContains(t, stderr, seed)
	}
	require.NoError(t, os.Chmod(file, 0o600))

	// Files that hold no user seed.
	account, err := nkeys.CreateAccount()
	require.NoError(t, err)
	accountSeed, err := account.Seed()
	require.NoError(t, err)
	for name, content := range map[string]string{"garbage": "hello\n", "account seed": string(accountSeed) + "\n", "public key": pub + "\n"} {
		f := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		require.NoError(t, os.WriteFile(f, []byte(content), 0o600))
		_, stderr, code, err := tryRun(nil, "", "keys", "pub", f)
		require.NoError(t, err)
		assert.Equal(t, 1, code, name)
		assert.Contains(t, stderr, "no nkey user seed", name)
		assert.NotContains(t, stderr, string(accountSeed), name)
	}
	_, stderr, code, err = tryRun(nil, "", "keys", "pub", filepath.Join(dir, "missing.nk"))
	require.NoError(t, err)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "no such file")

	// Without --out the key goes to approver.nk in the working directory.
	cwd := t.TempDir()
	cmd := exec.Command(bin, "keys", "new")
	cmd.Dir = cwd
	var outBuf bytes.Buffer
	cmd.Stdout = &outBuf
	require.NoError(t, cmd.Run())
	st, err = os.Stat(filepath.Join(cwd, "approver.nk"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	assert.True(t, nkeys.IsValidPublicUserKey(strings.TrimSpace(outBuf.String())))
}

// publishApproval stores an approval request as a worker would, and
// returns the digest of its calls.
func publishApproval(t *testing.T, js jetstream.JetStream, req schemas.ApprovalRequest, digest string) {
	t.Helper()
	req.PendingDigest = digest
	data, err := schemas.Encode(req)
	require.NoError(t, err)
	ctx := testsupport.Context(t, waitFor)
	_, err = js.Publish(ctx, "jetpilot.approvals."+req.JobID, data)
	require.NoError(t, err)
}

// decisionsOf returns the decisions published for a job, as stored (no
// worker takes them here). DECISIONS is a work queue, which no second
// consumer may read: the messages are got one by one.
func decisionsOf(t *testing.T, js jetstream.JetStream, jobID string) [][]byte {
	t.Helper()
	ctx := testsupport.Context(t, waitFor)
	st, err := js.Stream(ctx, "JETPILOT_DECISIONS")
	require.NoError(t, err)
	var out [][]byte
	for seq := uint64(1); ; {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject("jetpilot.decisions."+jobID))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		require.NoError(t, err)
		out = append(out, m.Data)
		seq = m.Sequence + 1
	}
}

// TestApproveSigned: approve --key fetches the approval request, binds the
// decision to its calls (pending_digest), stamps decided_at and signs; a
// key, a request or a decision that is not right is refused before
// anything is published. No worker runs here, so the decisions are
// published without waiting for one (--wait-timeout 0).
func TestApproveSigned(t *testing.T) {
	t.Parallel()
	s, _, js := testnats.Start(t)
	url := testnats.URL(s)
	out, code := run(t, "", "setup", "--nats", url)
	require.Equal(t, 0, code, out)
	key, pub := newKey(t)

	now := time.Now().UTC().Truncate(time.Second)
	calls := []schemas.ToolCall{
		{ID: "c1", Name: "stakpak__run_command", Arguments: json.RawMessage(`{"command":"kubectl -n prod rollout restart deploy/api > /tmp/x"}`), Rule: "prod-change"},
		{ID: "c2", Name: "stakpak__create_file", Arguments: json.RawMessage(`{"path":"/srv/a","content":"x"}`)},
	}
	digest, err := signing.PendingDigest(calls)
	require.NoError(t, err)
	request := func(jobID, approvalID string) schemas.ApprovalRequest {
		return schemas.ApprovalRequest{Schema: schemas.ApprovalSchemaID, ApprovalID: approvalID, JobID: jobID, SessionID: "s", RunID: "r",
			PendingToolCalls: calls, RequestedAt: now, ExpiresAt: now.Add(time.Hour)}
	}
	// An earlier pause of the same job, and a request of another job.
	publishApproval(t, js, request("sig-1", "sig-1:1"), digest)
	publishApproval(t, js, request("other", "other:1"), digest)
	publishApproval(t, js, request("sig-1", "sig-1:2"), digest)

	verify := func(raw []byte) schemas.Decision {
		t.Helper()
		signer, err := signing.Verify(raw)
		require.NoError(t, err, "%s", raw)
		assert.Equal(t, pub, signer)
		d, err := schemas.DecodeDecision(raw)
		require.NoError(t, err)
		assert.Equal(t, digest, d.PendingDigest)
		assert.WithinDuration(t, time.Now(), d.DecidedAt, time.Minute)
		assert.Equal(t, time.UTC, d.DecidedAt.Location())
		assert.Contains(t, string(raw), `"decided_at":"`+d.DecidedAt.Format(time.RFC3339)+`"`, "RFC 3339 in UTC")
		return d
	}

	t.Run("allow, the job found in the stream", func(t *testing.T) {
		out, code := run(t, "", "approve", "sig-1:2", "--nats", url, "--allow", "--key", key, "--by", "Zoë", "--wait-timeout", "0")
		require.Equal(t, 0, code, out)
		assert.Contains(t, out, "signed by "+pub)
		got := decisionsOf(t, js, "sig-1")
		require.Len(t, got, 1)
		d := verify(got[0])
		assert.Equal(t, "sig-1:2", d.ApprovalID)
		assert.Equal(t, "sig-1", d.JobID)
		assert.Equal(t, schemas.DecideAllow, d.All)
		assert.Equal(t, "Zoë", d.DecidedBy)
	})

	t.Run("per call, with --job", func(t *testing.T) {
		out, code := run(t, "", "approve", "sig-1:1", "--job", "sig-1", "--nats", url, "--tool", "c1=accept", "--tool", "c2=reject", "--key", key, "--wait-timeout", "0")
		require.Equal(t, 0, code, out)
		got := decisionsOf(t, js, "sig-1")
		require.Len(t, got, 2)
		d := verify(got[1])
		assert.Equal(t, "sig-1:1", d.ApprovalID)
		assert.Equal(t, map[string]schemas.ToolDecision{"c1": {Action: schemas.ActionAccept}, "c2": {Action: schemas.ActionReject}}, d.Decisions)
	})

	t.Run("without --key, unsigned as before", func(t *testing.T) {
		out, code := run(t, "", "approve", "other:1", "--job", "other", "--nats", url, "--deny", "--wait-timeout", "0")
		require.Equal(t, 0, code, out)
		got := decisionsOf(t, js, "other")
		require.Len(t, got, 1)
		_, err := signing.Verify(got[0])
		require.ErrorIs(t, err, signing.ErrNoSignature)
		assert.NotContains(t, string(got[0]), "pending_digest")
	})

	// Each of these is refused, and publishes nothing.
	truncated := append([]schemas.ToolCall(nil), calls...)
	truncated[1].ArgumentsTruncated = true
	truncDigest, err := signing.PendingDigest(truncated)
	require.NoError(t, err)
	tr := request("trunc", "trunc:1")
	tr.PendingToolCalls = truncated
	publishApproval(t, js, tr, truncDigest)
	publishApproval(t, js, request("liar", "liar:1"), strings.Repeat("0", 64))
	openKey := filepath.Join(t.TempDir(), "open.nk")
	keyData, err := os.ReadFile(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(openKey, keyData, 0o644))
	require.NoError(t, os.Chmod(openKey, 0o644)) // whatever the umask

	for _, tc := range []struct {
		name, job string
		args      []string
		code      int
		stderr    string
	}{
		{"key readable by others", "sig-1", []string{"approve", "sig-1:1", "--job", "sig-1", "--allow", "--key", openKey}, 2, "chmod 600 " + openKey},
		{"missing key", "sig-1", []string{"approve", "sig-1:1", "--job", "sig-1", "--allow", "--key", openKey + ".gone"}, 2, "no such file"},
		{"unknown approval of the job", "sig-1", []string{"approve", "sig-1:9", "--job", "sig-1", "--allow", "--key", key}, 1, "no approval request sig-1:9 for job sig-1"},
		{"unknown approval", "nope", []string{"approve", "nope:1", "--allow", "--key", key}, 1, "unknown approval nope:1"},
		{"a call left out", "sig-1", []string{"approve", "sig-1:1", "--job", "sig-1", "--tool", "c1=accept", "--key", key}, 2, "call c2 (stakpak__create_file) has no decision"},
		{"a call not pending", "sig-1", []string{"approve", "sig-1:1", "--job", "sig-1", "--tool", "c1=accept", "--tool", "c2=reject", "--tool", "c9=accept", "--key", key}, 2,
			"--tool c9: not a pending call of approval sig-1:1"},
		{"truncated call accepted", "trunc", []string{"approve", "trunc:1", "--allow", "--key", key}, 2, "call c2: its arguments were shortened"},
		{"request digest does not match its calls", "liar", []string{"approve", "liar:1", "--deny", "--key", key}, 1, "is not the digest of its pending_tool_calls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(decisionsOf(t, js, tc.job))
			stdout, stderr, code, err := tryRun(nil, "", append(tc.args, "--nats", url)...)
			require.NoError(t, err)
			assert.Equal(t, tc.code, code, "stdout: %s\nstderr: %s", stdout, stderr)
			assert.Contains(t, stderr, tc.stderr)
			assert.NotContains(t, stderr, strings.TrimSpace(string(keyData)), "the seed is never printed")
			assert.Len(t, decisionsOf(t, js, tc.job), before, "nothing published")
		})
	}

	// A truncated call may be denied, signed.
	out, code = run(t, "", "approve", "trunc:1", "--deny", "--key", key, "--nats", url, "--wait-timeout", "0")
	require.Equal(t, 0, code, out)
	got := decisionsOf(t, js, "trunc")
	require.Len(t, got, 1)
	_, err = signing.Verify(got[0])
	require.NoError(t, err)
}

// TestApproveSignedEndToEnd: a worker takes a signed decision (the schema
// knows its new members) and the paused job completes.
func TestApproveSignedEndToEnd(t *testing.T) {
	t.Parallel()
	s, _, js := testnats.Start(t)
	_, simURL := agentsimtest.New(t, agentsim.Options{})
	url := testnats.URL(s)
	key, pub := newKey(t)
	// A signed policy naming the key: every call needs its approval.
	pol := filepath.Join(t.TempDir(), "policy.json")
	require.NoError(t, os.WriteFile(pol, []byte(`{"version":1,"decisions":"signed","tools":{"default":"approve"},"approvers":{"alice":{"key":"`+pub+`"}}}`), 0o600))
	out, code := run(t, "", "policy", "set", "--nats", url, pol)
	require.Equal(t, 0, code, out)
	w := start(t, nil, "worker", "--nats", url, "--agent-url", simURL)
	require.Eventually(t, func() bool { return strings.Contains(w.Output(), "worker started") }, waitFor, 20*time.Millisecond)

	out, code = run(t, "", "submit", "--nats", url, "--id", "signed-e2e", "--wait", "--pause-on-approval",
		"--prompt", "#sim tool stakpak__run_command {\"command\":\"deploy > /tmp/log\"}\n#sim text shipped")
	require.Equal(t, 10, code, out)
	client := queue.NewClient(js, queue.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	// The paused result is published before the approval request: submit
	// can return before the request is stored.
	var req schemas.ApprovalRequest
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, client.Approvals(ctx, false, func(a schemas.ApprovalRequest) error {
			if a.JobID == "signed-e2e" {
				req = a
			}
			return nil
		}))
		assert.NotEmpty(c, req.ApprovalID)
	}, waitFor, 50*time.Millisecond)

	out, code = run(t, "", "approve", req.ApprovalID, "--nats", url, "--allow", "--key", key)
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "signed by "+pub)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		out, stderr, _, err := tryRun(nil, "", "results", "--nats", url, "--job", "signed-e2e")
		assert.NoError(c, err, "stderr: %s", stderr)
		assert.Contains(c, out, "job signed-e2e: completed")
	}, waitFor, 100*time.Millisecond)
	require.NoError(t, w.Cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 0, w.ExitCode(t, waitFor))
}
