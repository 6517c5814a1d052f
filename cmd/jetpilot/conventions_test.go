package main_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

// mustRun runs jetpilot and returns stdout, stderr and the exit code.
func mustRun(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	stdout, stderr, code, err := tryRun(env, "", args...)
	require.NoError(t, err)
	return stdout, stderr, code
}

func TestVersion(t *testing.T) {
	t.Parallel()
	out, _, code := mustRun(t, nil, "--version")
	assert.Equal(t, 0, code)
	assert.True(t, strings.HasPrefix(out, "jetpilot "), out)
	assert.Contains(t, out, runtime.Version(), "the toolchain the binary was built with")
}

// startServer runs a JetStream server with the given auth and JetStream
// domain (not testnats': it has neither).
func startServer(t *testing.T, opts server.Options) *server.Server {
	t.Helper()
	opts.Host, opts.Port, opts.JetStream, opts.StoreDir, opts.NoSigs, opts.NoLog = "127.0.0.1", -1, true, t.TempDir(), true, true
	s, err := server.NewServer(&opts)
	require.NoError(t, err)
	s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	require.True(t, s.ReadyForConnections(10*time.Second))
	return s
}

// NATS contexts are read as natscli writes them, with natscli's
// precedence, and --js-domain (or the context's jetstream_domain) is where
// every JetStream call goes.
func TestNATSContextsAndDomain(t *testing.T) {
	t.Parallel()
	const pw = "ctx-pw-5f1e"
	s := startServer(t, server.Options{JetStreamDomain: "hub", Users: []*server.User{{Username: "ops", Password: pw}}})
	url := s.ClientURL()
	cfg := t.TempDir()
	ctxDir := filepath.Join(cfg, "nats", "context")
	require.NoError(t, os.MkdirAll(ctxDir, 0o700))
	write := func(name, body string) {
		require.NoError(t, os.WriteFile(filepath.Join(ctxDir, name+".json"), []byte(body), 0o600))
	}
	write("ops", `{"url":"`+url+`","user":"ops","password":"env://OPS_PW","jetstream_domain":"hub"}`)
	write("wrong", `{"url":"`+url+`","user":"ops","password":"not-the-password"}`)
	require.NoError(t, os.WriteFile(filepath.Join(cfg, "nats", "context.txt"), []byte("wrong"), 0o600))
	env := func(more ...string) []string {
		return append([]string{"XDG_CONFIG_HOME=" + cfg, "OPS_PW=" + pw}, more...)
	}
	check := func(name string, wantCode int, e []string, args ...string) string {
		t.Helper()
		out, stderr, code := mustRun(t, e, args...)
		assert.Equal(t, wantCode, code, "%s: %s%s", name, out, stderr)
		assert.NotContains(t, out+stderr, pw, "%s: the password is never printed", name)
		return stderr
	}

	stderr := check("the selected context (context.txt) is used", 1, env(), "setup")
	assert.Contains(t, stderr, "NATS context wrong")
	check("NATS_CONTEXT selects another", 0, env("NATS_CONTEXT=ops"), "setup")
	check("--context over NATS_CONTEXT", 0, env("NATS_CONTEXT=wrong"), "setup", "--context", "ops")
	check("a context file by path", 0, env(), "setup", "--context", filepath.Join(ctxDir, "ops.json"))
	check("NATS_USER/NATS_PASSWORD replace the context's credentials", 0, env("NATS_USER=ops", "NATS_PASSWORD="+pw), "setup", "--context", "wrong")
	pwFile := filepath.Join(t.TempDir(), "pw")
	require.NoError(t, os.WriteFile(pwFile, []byte(pw), 0o600))
	check("flag credentials replace the context's", 0, env(), "setup", "--context", "wrong", "--user", "ops", "--password-file", pwFile)
	check("--nats over the context's url", 1, env(), "setup", "--context", "ops", "--nats", "nats://127.0.0.1:1")
	check("NATS_URL over the context's url", 1, env("NATS_URL=nats://127.0.0.1:1"), "setup", "--context", "ops")
	stderr = check("an unknown context is a usage error", 2, env(), "setup", "--context", "missing")
	assert.Contains(t, stderr, `unknown NATS context "missing"`)
	assert.Contains(t, stderr, "known: ops, wrong")

	// The domain: the context's works, --js-domain overrides it, and a
	// domain nobody serves fails: JetStream calls go through the domain.
	check("the context's jetstream_domain", 0, env(), "jobs", "--context", "ops")
	stderr = check("--js-domain over the context's", 1, env(), "jobs", "--context", "ops", "--js-domain", "elsewhere")
	assert.Contains(t, stderr, "JETPILOT_JOBS")
	check("--js-domain hub", 0, env(), "submit", "--context", "ops", "--js-domain", "hub", "--prompt", "x", "--id", "dom-1")
	out, _, code := mustRun(t, env(), "jobs", "--state", "queued", "--context", "ops", "--js-domain", "hub", "--json")
	require.Equal(t, 0, code)
	assert.Contains(t, out, `"job_id": "dom-1"`)
}

// NATS_TOKEN is a token from the environment (there is no --token flag:
// argv is visible to other users); --token-file reads one from a file.
func TestNATSToken(t *testing.T) {
	t.Parallel()
	const tok = "tok-9c2d"
	s := startServer(t, server.Options{Authorization: tok})
	_, stderr, code := mustRun(t, nil, "setup", "--nats", s.ClientURL())
	assert.Equal(t, 1, code, "no token: refused")
	assert.Contains(t, strings.ToLower(stderr), "authorization")
	_, stderr, code = mustRun(t, []string{"NATS_TOKEN=" + tok}, "setup", "--nats", s.ClientURL())
	assert.Equal(t, 0, code, stderr)
	f := filepath.Join(t.TempDir(), "tok")
	require.NoError(t, os.WriteFile(f, []byte(tok+"\n"), 0o600))
	out, stderr, code := mustRun(t, []string{"NATS_TOKEN=wrong"}, "dead", "--nats", s.ClientURL(), "--token-file", f)
	assert.Equal(t, 0, code, "--token-file over NATS_TOKEN: %s", stderr)
	assert.Contains(t, out, "no dead letters")
	assert.NotContains(t, out+stderr, tok)
}

// Without a worker, submit --wait gives up at --wait-timeout with exit 75,
// approve gives up waiting for an answer with 75, and the job is listed as
// queued meanwhile.
func TestWaitsAreBounded(t *testing.T) {
	t.Parallel()
	s, _, js := testnats.Start(t)
	url := testnats.URL(s)
	_, _, code := mustRun(t, nil, "setup", "--nats", url)
	require.Equal(t, 0, code)

	began := time.Now()
	_, stderr, code := mustRun(t, nil, "submit", "--nats", url, "--id", "gu-1", "--prompt", "x", "--timeout", "1s", "--wait", "--wait-timeout", "1500ms")
	assert.Equal(t, 75, code, stderr)
	assert.Contains(t, stderr, "gave up waiting for job gu-1 after 1.5s")
	assert.Contains(t, stderr, "it may still run")
	assert.Less(t, time.Since(began), 30*time.Second)

	out, _, code := mustRun(t, nil, "jobs", "--nats", url, "--state", "queued")
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "gu-1  queued")
	out, _, code = mustRun(t, nil, "jobs", "--nats", url)
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "queue depth: default 1")
	out, _, code = mustRun(t, nil, "job", "gu-1", "--nats", url)
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "job gu-1: queued")

	ctx := testsupport.Context(t, 20*time.Second)
	_, err := queue.PublishApproval(ctx, js, queue.Config{}, schemas.ApprovalRequest{ApprovalID: "apr_gu", JobID: "gu-1",
		PendingToolCalls: []schemas.ToolCall{{ID: "call_1", Name: "stakpak__run_command", Arguments: json.RawMessage(`{}`)}}})
	require.NoError(t, err)
	_, stderr, code = mustRun(t, nil, "approve", "apr_gu", "--job", "gu-1", "--allow", "--nats", url, "--wait-timeout", "1s")
	assert.Equal(t, 75, code, stderr)
	assert.Contains(t, stderr, "no worker answered within 1s")
}

// The job states from the command line against a real worker: jobs by
// state, one job's records, dead letters and requeue; unknown ids exit 1
// with a message; approve waits for the worker's answer.
func TestJobStatesFromTheCommandLine(t *testing.T) {
	t.Parallel()
	dev, url := startDev(t)

	_, _, code := mustRun(t, nil, "submit", "--nats", url, "--id", "st-paused", "--wait", "--pause-on-approval",
		"--prompt", "#sim tool stakpak__run_command {\"command\":\"deploy\"}\n#sim text shipped")
	require.Equal(t, 10, code)
	_, _, code = mustRun(t, nil, "submit", "--nats", url, "--id", "st-dead", "--wait", "--prompt", "#sim error boom")
	require.Equal(t, 1, code)
	_, _, code = mustRun(t, nil, "submit", "--nats", url, "--id", "st-done", "--wait", "--prompt", "#sim text fine")
	require.Equal(t, 0, code)

	out, _, code := mustRun(t, nil, "jobs", "--nats", url, "--state", "paused", "--json")
	require.Equal(t, 0, code)
	var page queue.JobPage
	require.NoError(t, json.Unmarshal([]byte(out), &page), out)
	require.Len(t, page.Jobs, 1)
	assert.Equal(t, "st-paused", page.Jobs[0].JobID)
	assert.Equal(t, queue.JobPaused, page.Jobs[0].State)
	out, _, code = mustRun(t, nil, "jobs", "--nats", url)
	require.Equal(t, 0, code)
	assert.Contains(t, out, "queue depth: empty")
	assert.Contains(t, out, "st-paused  paused")
	out, _, _ = mustRun(t, nil, "jobs", "--nats", url, "--state", "completed")
	assert.Contains(t, out, "st-done  completed")
	assert.NotContains(t, out, "st-dead")
	out, _, _ = mustRun(t, nil, "jobs", "--nats", url, "--state", "settled", "--limit", "1")
	assert.Contains(t, out, "st-dead  failed", "oldest first")
	assert.Contains(t, out, "more: jetpilot jobs --state settled --after ")

	out, _, code = mustRun(t, nil, "job", "st-paused", "--nats", url)
	require.Equal(t, 0, code)
	assert.Contains(t, out, "job st-paused: paused")
	assert.Contains(t, out, "waiting for approval apr_")
	assert.Contains(t, out, "result: job st-paused: paused")
	out, _, code = mustRun(t, nil, "job", "st-paused", "--nats", url, "--json")
	require.Equal(t, 0, code)
	var d queue.JobDetail
	require.NoError(t, json.Unmarshal([]byte(out), &d), out)
	require.NotNil(t, d.Run)
	require.Len(t, d.Approvals, 1)
	approvalID := d.Approvals[0].ApprovalID
	assert.Equal(t, 1, d.Attempts)

	out, _, code = mustRun(t, nil, "dead", "--nats", url)
	require.Equal(t, 0, code)
	assert.Contains(t, out, "dead letter st-dead: ")
	assert.Contains(t, out, "requeue: jetpilot requeue st-dead")
	out, stderr, code := mustRun(t, nil, "requeue", "st-dead", "--nats", url)
	require.Equal(t, 0, code, stderr)
	newID := strings.TrimSpace(out)
	assert.Regexp(t, `^st-dead:r[0-9]+$`, newID)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		out, _, _, err := tryRun(nil, "", "results", "--nats", url, "--job", newID)
		assert.NoError(c, err)
		assert.Contains(c, out, "job "+newID+": failed", "the requeued job ran (and failed again, as its prompt says)")
	}, waitFor, 100*time.Millisecond)
	out, _, code = mustRun(t, nil, "requeue", "st-dead", "--id", "st-dead-again", "--nats", url)
	assert.Equal(t, 0, code)
	assert.Equal(t, "st-dead-again\n", out)
	_, stderr, code = mustRun(t, nil, "requeue", "st-dead", "--id", "st-dead-again", "--nats", url)
	assert.Equal(t, 2, code, "the same new id twice: a duplicate")
	assert.Contains(t, stderr, "already submitted")

	// Unknown ids: a message and exit 1.
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"job", "nope"}, "unknown job"},
		{[]string{"results", "--job", "nope"}, "no results for job nope"},
		{[]string{"events", "nope"}, "no events for job nope"},
		{[]string{"approve", "apr_nope", "--allow"}, "unknown approval apr_nope"},
		{[]string{"approve", "apr_nope", "--job", "st-paused", "--allow"}, "no approval request apr_nope for job st-paused"},
		{[]string{"requeue", "st-done"}, "no dead letter for job st-done"},
	} {
		out, stderr, code := mustRun(t, nil, append(tc.args, "--nats", url)...)
		assert.Equal(t, 1, code, "%v: %s", tc.args, stderr)
		assert.Empty(t, out, tc.args)
		assert.Contains(t, stderr, tc.msg, tc.args)
	}

	// approve waits for the worker: applied, then refused when the same
	// approval is answered again.
	out, stderr, code = mustRun(t, nil, "approve", approvalID, "--allow", "--nats", url)
	assert.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "applied")
	_, stderr, code = mustRun(t, nil, "approve", approvalID, "--job", "st-paused", "--deny", "--nats", url)
	assert.Equal(t, 1, code, stderr)
	assert.Contains(t, stderr, "refused: approval_")

	require.NoError(t, dev.Cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 0, dev.ExitCode(t, waitFor))
}

// approve reports what the worker did with each signed decision: a vote
// short of the quorum, a refusal with its code, and the decision that
// applies.
func TestApproveReportsVotesAndRefusals(t *testing.T) {
	t.Parallel()
	s, _, _ := testnats.Start(t)
	_, simURL := agentsimtest.New(t, agentsim.Options{})
	url := testnats.URL(s)
	alice, alicePub := newKey(t)
	bob, bobPub := newKey(t)
	carol, _ := newKey(t)
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	require.NoError(t, os.WriteFile(pol, []byte(`version: 1
decisions: signed
tools:
  default: deny
  rules:
    - {name: change, match: {tools: [run_command]}, action: approve,
       approvers: {groups: [sre], quorum: 2, requester_may_approve: true}}
approvers:
  alice: {key: `+alicePub+`, groups: [sre]}
  bob: {key: `+bobPub+`, groups: [sre]}
`), 0o600))
	_, stderr, code := mustRun(t, nil, "policy", "set", "--nats", url, pol)
	require.Equal(t, 0, code, stderr)
	w := start(t, nil, "worker", "--nats", url, "--agent-url", simURL)
	require.Eventually(t, func() bool { return strings.Contains(w.Output(), "worker started") }, waitFor, 20*time.Millisecond)

	_, _, code = mustRun(t, nil, "submit", "--nats", url, "--id", "quorum-1", "--wait",
		"--prompt", "#sim tool stakpak__run_command {\"command\":\"deploy\"}\n#sim text shipped")
	require.Equal(t, 10, code)
	out, _, code := mustRun(t, nil, "job", "quorum-1", "--nats", url, "--json")
	require.Equal(t, 0, code)
	var d queue.JobDetail
	require.NoError(t, json.Unmarshal([]byte(out), &d), out)
	require.Len(t, d.Approvals, 1)
	id := d.Approvals[0].ApprovalID

	out, stderr, code = mustRun(t, nil, "approve", id, "--job", "quorum-1", "--allow", "--key", alice, "--nats", url)
	assert.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "recorded")
	assert.Contains(t, out, "still needed: 1 more")
	_, stderr, code = mustRun(t, nil, "approve", id, "--job", "quorum-1", "--allow", "--key", alice, "--nats", url)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "refused: duplicate_vote")
	_, stderr, code = mustRun(t, nil, "approve", id, "--job", "quorum-1", "--allow", "--key", carol, "--nats", url)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "refused: unknown_key")
	out, stderr, code = mustRun(t, nil, "approve", id, "--job", "quorum-1", "--allow", "--key", bob, "--nats", url)
	assert.Equal(t, 0, code, stderr)
	assert.Contains(t, out, "applied")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		out, _, _, err := tryRun(nil, "", "results", "--nats", url, "--job", "quorum-1")
		assert.NoError(c, err)
		assert.Contains(c, out, "job quorum-1: completed")
	}, waitFor, 100*time.Millisecond)
	require.NoError(t, w.Cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 0, w.ExitCode(t, waitFor))
}

// NATS_NKEY (as --nkey) signs in with an nkey seed file.
func TestNATSNkeyFromEnvironment(t *testing.T) {
	t.Parallel()
	seed, pub := newKey(t)
	s := startServer(t, server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}})
	_, _, code := mustRun(t, nil, "dead", "--nats", s.ClientURL())
	assert.Equal(t, 1, code, "without the key: refused")
	out, stderr, code := mustRun(t, []string{"NATS_NKEY=" + seed}, "setup", "--nats", s.ClientURL())
	assert.Equal(t, 0, code, "%s%s", out, stderr)
	_, _, code = mustRun(t, []string{"NATS_NKEY=" + seed + ".missing"}, "setup", "--nats", s.ClientURL(), "--nkey", seed)
	assert.Equal(t, 0, code, "--nkey over NATS_NKEY")
}

// NATS_CREDS (as --creds) signs in with a user JWT and seed, against a
// server in operator mode.
func TestNATSCredsFromEnvironment(t *testing.T) {
	t.Parallel()
	okp, err := nkeys.CreateOperator()
	require.NoError(t, err)
	opub, err := okp.PublicKey()
	require.NoError(t, err)
	oc := jwt.NewOperatorClaims(opub)
	akp, err := nkeys.CreateAccount()
	require.NoError(t, err)
	apub, err := akp.PublicKey()
	require.NoError(t, err)
	ac := jwt.NewAccountClaims(apub)
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	ajwt, err := ac.Encode(okp)
	require.NoError(t, err)
	ukp, err := nkeys.CreateUser()
	require.NoError(t, err)
	upub, err := ukp.PublicKey()
	require.NoError(t, err)
	ujwt, err := jwt.NewUserClaims(upub).Encode(akp)
	require.NoError(t, err)
	useed, err := ukp.Seed()
	require.NoError(t, err)
	creds, err := jwt.FormatUserConfig(ujwt, useed)
	require.NoError(t, err)
	credsFile := filepath.Join(t.TempDir(), "user.creds")
	require.NoError(t, os.WriteFile(credsFile, creds, 0o600))

	// Operator mode with JetStream needs a system account.
	skp, err := nkeys.CreateAccount()
	require.NoError(t, err)
	spub, err := skp.PublicKey()
	require.NoError(t, err)
	sjwt, err := jwt.NewAccountClaims(spub).Encode(okp)
	require.NoError(t, err)
	resolver := &server.MemAccResolver{}
	require.NoError(t, resolver.Store(apub, ajwt))
	require.NoError(t, resolver.Store(spub, sjwt))
	s := startServer(t, server.Options{TrustedOperators: []*jwt.OperatorClaims{oc}, AccountResolver: resolver, SystemAccount: spub})
	_, _, code := mustRun(t, nil, "dead", "--nats", s.ClientURL())
	assert.Equal(t, 1, code, "without credentials: refused")
	out, stderr, code := mustRun(t, []string{"NATS_CREDS=" + credsFile}, "setup", "--nats", s.ClientURL(), "--jobs-max-bytes", "64MiB",
		"--results-max-bytes", "64MiB", "--events-max-bytes", "64MiB", "--dead-max-bytes", "64MiB", "--audit-max-bytes", "64MiB")
	assert.Equal(t, 0, code, "%s%s", out, stderr)
	assert.NotContains(t, out+stderr, string(useed), "the seed is never printed")
}

// What publishers and workers wrote is escaped by jobs, job and dead: a
// queued message's id header and profile subject, a dead letter's reason,
// error and metadata.
func TestJobListingsEscapeHostileText(t *testing.T) {
	t.Parallel()
	s, _, js := testnats.Start(t)
	url := testnats.URL(s)
	ctx := testsupport.Context(t, waitFor)
	qcfg := queue.Config{}
	require.NoError(t, queue.Setup(ctx, js, qcfg))
	msg := nats.NewMsg(qcfg.JobSubject("ev\x1b[2Kil"))
	msg.Header.Set(jetstream.MsgIDHeader, "id\r\x1b[1Aok")
	msg.Data = []byte("not json\u202e")
	_, err := js.PublishMsg(ctx, msg)
	require.NoError(t, err)
	dl := schemas.DeadLetter{JobID: "hostile-dead", Reason: "run_error\x1b[2K", Error: "boom\r\u202eok", Worker: "w\u200b1",
		Attempt: 1, DeadAt: time.Now().UTC(), Metadata: map[string]string{"thread": "T\u2066"}}
	dl.SetJob([]byte(`{"id":"hostile-dead","prompt":"x"}`))
	_, err = queue.PublishDead(ctx, js, qcfg, dl)
	require.NoError(t, err)

	for _, args := range [][]string{{"jobs"}, {"jobs", "--state", "queued"}, {"dead"}, {"job", "hostile-dead"},
		{"jobs", "--state", "queued", "--json"}, {"dead", "--json"}, {"job", "hostile-dead", "--json"}} {
		out, stderr, code := mustRun(t, nil, append(args, "--nats", url)...)
		require.Equal(t, 0, code, "%v: %s", args, stderr)
		for _, bad := range []string{"\x1b", "\r", "\u202e", "\u200b", "\u2066"} {
			assert.NotContains(t, out, bad, "%v: raw %q in:\n%s", args, bad, out)
		}
	}
	out, _, _ := mustRun(t, nil, "jobs", "--state", "queued", "--nats", url)
	assert.Contains(t, out, `\x1b[1Aok  queued`)
	assert.Contains(t, out, `profile ev\x1b[2Kil`)
	out, _, _ = mustRun(t, nil, "dead", "--nats", url)
	assert.Contains(t, out, `run_error\x1b[2K`)
	assert.Contains(t, out, `boom\r\u202eok`)
}
