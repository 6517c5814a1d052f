package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

// bin is the jetpilot binary, built once for every test here.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "jetpilot-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "jetpilot")
	// No NATS context or NATS_* variable of whoever runs the tests reaches
	// the commands they run: each test that wants one sets it.
	os.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	for _, v := range []string{"NATS_CONTEXT", "NATS_URL", "NATS_CREDS", "NATS_NKEY", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_CERT", "NATS_KEY", "NATS_CA"} {
		os.Unsetenv(v)
	}
	if err := testsupport.Build(bin, ".", true); err != nil {
		fmt.Fprintln(os.Stderr, "build jetpilot:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const waitFor = 60 * time.Second

// start runs jetpilot with args in the background; cleanup kills it and
// shows its output if the test failed.
func start(t *testing.T, env []string, args ...string) *testsupport.Proc {
	t.Helper()
	return testsupport.StartProc(t, "jetpilot "+strings.Join(args, " "), env, bin, args...)
}

// run runs jetpilot to completion with stdin and returns stdout and the exit code.
func run(t *testing.T, stdin string, args ...string) (string, int) {
	t.Helper()
	return runEnv(t, nil, stdin, args...)
}

// runEnv is run with extra environment variables.
func runEnv(t *testing.T, env []string, stdin string, args ...string) (string, int) {
	t.Helper()
	stdout, stderr, code, err := tryRun(env, stdin, args...)
	require.NoError(t, err, "stderr: %s", stderr)
	if t.Failed() {
		t.Logf("stderr: %s", stderr)
	}
	return stdout, code
}

// tryRun runs jetpilot to completion and returns its output and exit code;
// err is an error other than a non-zero exit. It fails no test, so it is
// safe inside an Eventually condition.
func tryRun(env []string, stdin string, args ...string) (stdout, stderr string, code int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var outBuf, errBuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &outBuf, &errBuf
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code, err = ee.ExitCode(), nil
	}
	return outBuf.String(), errBuf.String(), code, err
}

var natsURLLine = regexp.MustCompile(`NATS \(JetStream.*\): (nats://\S+)`)

// startDev runs `jetpilot dev` (random NATS port, --max-timeout 30s) and
// waits until its worker runs; it returns the process and its NATS URL.
func startDev(t *testing.T) (*testsupport.Proc, string) {
	t.Helper()
	dev := start(t, nil, "dev", "--dir", t.TempDir(), "--nats-port", "-1", "--max-timeout", "30s")
	var url string
	require.Eventually(t, func() bool {
		m := natsURLLine.FindStringSubmatch(dev.Output())
		if m != nil && strings.Contains(dev.Output(), "worker running") {
			url = m[1]
			return true
		}
		return false
	}, waitFor, 20*time.Millisecond, "dev prints its NATS URL")
	return dev, url
}

func TestDevAndSubmitWaitExitCodes(t *testing.T) {
	dev, url := startDev(t)

	for _, tc := range []struct {
		name   string
		args   []string
		stdin  string
		code   int
		status schemas.Status
	}{
		{"completed", []string{"--prompt", "#sim text all good"}, "", 0, schemas.StatusCompleted},
		{"failed", []string{"--prompt", "#sim error boom"}, "", 1, schemas.StatusFailed},
		{"paused", []string{"--prompt", "#sim tool stakpak__run_command {}", "--pause-on-approval"}, "", 10, schemas.StatusPaused},
		{"timed out", []string{"--prompt", "#sim hang", "--timeout", "500ms"}, "", 124, schemas.StatusTimedOut},
		{"job on stdin", nil, `{"id":"stdin-1","prompt":"#sim text from stdin","metadata":{"k":"v"}}`, 0, schemas.StatusCompleted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"submit", "--nats", url, "--wait", "--json"}, tc.args...)
			out, code := run(t, tc.stdin, args...)
			assert.Equal(t, tc.code, code, out)
			var res schemas.Result
			require.NoError(t, json.Unmarshal([]byte(out), &res), out)
			assert.Equal(t, tc.status, res.Status)
		})
	}
	t.Run("flags from the environment", func(t *testing.T) {
		// NATS_URL and JETPILOT_<FLAG> stand in for --nats and any flag.
		out, code := runEnv(t, []string{"NATS_URL=" + url, "JETPILOT_WAIT=true", "JETPILOT_JSON=true", "JETPILOT_ID=env-1"}, "",
			"submit", "--prompt", "#sim text configured by env")
		require.Equal(t, 0, code, out)
		var res schemas.Result
		require.NoError(t, json.Unmarshal([]byte(out), &res), out)
		assert.Equal(t, "env-1", res.JobID)
		assert.Equal(t, "configured by env", res.Stdout)
		_, code = runEnv(t, []string{"JETPILOT_TIMEOUT=soon"}, "", "submit", "--nats", url, "--prompt", "x")
		assert.Equal(t, 2, code, "a bad value from the environment is a usage error")
	})
	t.Run("invalid job is refused before publishing", func(t *testing.T) {
		out, code := run(t, `{"id":"bad id!","prompt":""}`, "submit", "--nats", url, "--wait")
		assert.Equal(t, 2, code, out)
	})
	t.Run("results lists them", func(t *testing.T) {
		out, code := run(t, "", "results", "--nats", url, "--job", "stdin-1")
		assert.Equal(t, 0, code)
		assert.Contains(t, out, "job stdin-1: completed")
		assert.Contains(t, out, "from stdin")
	})

	t.Run("approve, events and cancel from the command line", func(t *testing.T) {
		out, code := run(t, "", "submit", "--nats", url, "--id", "cli-hitl", "--wait", "--pause-on-approval",
			"--prompt", "#sim tool stakpak__run_command {\"command\":\"deploy\"}\n#sim text shipped")
		require.Equal(t, 10, code, out)
		out, code = run(t, "", "approvals", "--nats", url, "--json")
		require.Equal(t, 0, code)
		var approvalID string
		dec := json.NewDecoder(strings.NewReader(out))
		for dec.More() {
			var a schemas.ApprovalRequest
			require.NoError(t, dec.Decode(&a))
			if a.JobID == "cli-hitl" {
				approvalID = a.ApprovalID
			}
		}
		require.NotEmpty(t, approvalID, out)
		out, code = run(t, "", "approve", approvalID, "--nats", url, "--allow", "--by", "tester")
		require.Equal(t, 0, code, out)
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			out, stderr, _, err := tryRun(nil, "", "results", "--nats", url, "--job", "cli-hitl")
			assert.NoError(c, err, "stderr: %s", stderr)
			assert.Contains(c, out, "job cli-hitl: completed")
		}, waitFor, 100*time.Millisecond)
		out, code = run(t, "", "events", "cli-hitl", "--nats", url)
		require.Equal(t, 0, code)
		assert.Contains(t, out, "approval_requested")
		assert.Contains(t, out, "approval_decided")

		_, code = run(t, "", "cancel", "cli-hitl", "--nats", url)
		assert.Equal(t, 1, code, "a finished job cannot be cancelled")
		_, code = run(t, "", "approve", approvalID, "--nats", url, "--allow", "--deny")
		assert.Equal(t, 2, code, "usage error")
	})

	require.NoError(t, dev.Cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 0, dev.ExitCode(t, waitFor), "dev exits 0 on SIGTERM")
}

func TestDevDemo(t *testing.T) {
	out, code := run(t, "", "dev", "--demo", "--dir", t.TempDir(), "--nats-port", "-1")
	assert.Equal(t, 0, code, out)
	assert.Contains(t, out, ": completed (exit 0)")
	assert.Contains(t, out, "tool calls: 1 accepted, 0 rejected")
	assert.Contains(t, out, "Nothing to fix.")
}

// TestKilledWorkerJobFinishedByAnother kills a worker process with SIGKILL
// mid-run; another worker re-attaches to the same run, which starts once.
func TestKilledWorkerJobFinishedByAnother(t *testing.T) {
	s, _, js := testnats.Start(t)
	sim, simURL := agentsimtest.New(t, agentsim.Options{})
	url := testnats.URL(s)
	args := func(name string) []string {
		return []string{"worker", "--nats", url, "--agent-url", simURL, "--name", name, "--ack-wait", "1s", "--shutdown-grace", "1s"}
	}
	first := start(t, nil, args("doomed")...)

	client := queue.NewClient(js, queue.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.Eventually(t, func() bool { return strings.Contains(first.Output(), "worker started") }, waitFor, 20*time.Millisecond)
	_, err := client.Submit(ctx, schemas.Job{ID: "kill-1", Prompt: "#sim text before,\n#sim sleep 2s\n#sim text after."})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return sim.ActiveRuns() == 1 }, waitFor, 10*time.Millisecond)
	require.NoError(t, first.Cmd.Process.Signal(syscall.SIGKILL))
	first.ExitCode(t, waitFor)

	start(t, nil, args("survivor")...)
	res, err := client.WaitResult(ctx, "kill-1")
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, "survivor", res.Worker)
	assert.Equal(t, "before,after.", res.Stdout)
	assert.Equal(t, 1, sim.RunsStarted(), "exactly one run for the job")
}

// TestSecretsStayOutOfOutput runs a worker with an agent token and checks
// that it is in none of the worker's output or the job's messages.
func TestSecretsStayOutOfOutput(t *testing.T) {
	const token = "s3cr3t-agent-token-value"
	s, _, js := testnats.Start(t)
	_, simURL := agentsimtest.New(t, agentsim.Options{Token: token})
	logFile := filepath.Join(t.TempDir(), "worker.jsonl")
	w := start(t, []string{"JETPILOT_AGENT_TOKEN=" + token}, "worker", "--nats", testnats.URL(s), "--agent-url", simURL, "--log-json", logFile, "--log-level", "debug")
	client := queue.NewClient(js, queue.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err := client.Submit(ctx, schemas.Job{ID: "secret-1", Prompt: "#sim text fine\n#sim error kaboom"})
	require.NoError(t, err)
	res, err := client.WaitResult(ctx, "secret-1")
	require.NoError(t, err)
	require.Equal(t, schemas.StatusFailed, res.Status, "the token was accepted: the run happened")
	require.NoError(t, w.Cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 0, w.ExitCode(t, waitFor))

	var everything strings.Builder
	everything.WriteString(w.Output())
	logs, err := os.ReadFile(logFile)
	require.NoError(t, err)
	require.NotEmpty(t, logs)
	everything.Write(logs)
	for _, stream := range []string{"JETPILOT_RESULTS", "JETPILOT_DEAD", "JETPILOT_EVENTS"} {
		st, err := js.Stream(ctx, stream)
		require.NoError(t, err)
		info, err := st.Info(ctx)
		require.NoError(t, err)
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			m, err := st.GetMsg(ctx, seq)
			if err == nil {
				everything.Write(m.Data)
			}
		}
	}
	assert.NotContains(t, everything.String(), token)
	st, err := os.Stat(logFile)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "the --log-json file is readable by its owner only")
	sc := bufio.NewScanner(strings.NewReader(string(logs)))
	lines := 0
	for sc.Scan() {
		lines++
		require.True(t, json.Valid(sc.Bytes()), "JSON log line: %s", sc.Text())
	}
	assert.Positive(t, lines)
}

// TestSubmitDuplicateAndDigest: submit --wait refuses to wait for a job id
// that was already submitted unless --attach is given, and reports a result
// whose job_digest is not that of the job it published as someone else's.
func TestSubmitDuplicateAndDigest(t *testing.T) {
	s, _, js := testnats.Start(t)
	_, simURL := agentsimtest.New(t, agentsim.Options{})
	url := testnats.URL(s)
	w := start(t, nil, "worker", "--nats", url, "--agent-url", simURL)
	require.Eventually(t, func() bool { return strings.Contains(w.Output(), "worker started") }, waitFor, 20*time.Millisecond)

	out, code := run(t, "", "submit", "--nats", url, "--id", "dup-1", "--prompt", "#sim text first", "--wait")
	require.Equal(t, 0, code, out)
	stdout, stderr, code, err := tryRun(nil, "", "submit", "--nats", url, "--id", "dup-1", "--prompt", "#sim text second", "--wait")
	require.NoError(t, err)
	assert.Equal(t, 2, code, stdout)
	assert.Contains(t, stderr, "already submitted")
	assert.Contains(t, stderr, "--attach")
	out, code = run(t, "", "submit", "--nats", url, "--id", "dup-1", "--prompt", "#sim text second", "--wait", "--attach")
	assert.Equal(t, 0, code, out)
	assert.Contains(t, out, "first", "--attach waits for the job that was submitted first")
	_, code = run(t, "", "submit", "--nats", url, "--id", "dup-1", "--prompt", "#sim text third")
	assert.Equal(t, 0, code, "without --wait a duplicate is only noted")

	// A result of another job with the id "dup-2" is already in the stream
	// (say, from before the duplicate window): its digest gives it away.
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	now := time.Now().UTC()
	other := schemas.Result{JobID: "dup-2", JobDigest: schemas.JobDigest([]byte(`{"id":"dup-2","prompt":"not yours"}`)),
		Stdout: "not yours", Attempt: 1, StartedAt: now, FinishedAt: now}
	other.SetStatus(schemas.StatusCompleted)
	data, err := json.Marshal(other)
	require.NoError(t, err)
	_, err = js.Publish(ctx, "jetpilot.results.dup-2", data)
	require.NoError(t, err)
	stdout, stderr, code, err = tryRun(nil, "", "submit", "--nats", url, "--id", "dup-2", "--prompt", "#sim text mine", "--wait")
	require.NoError(t, err)
	assert.Equal(t, 2, code, stdout)
	assert.Contains(t, stderr, "someone else's job")

	// A result without a digest (an older worker) is accepted.
	legacy := other
	legacy.JobID, legacy.JobDigest = "dup-3", ""
	data, err = json.Marshal(legacy)
	require.NoError(t, err)
	_, err = js.Publish(ctx, "jetpilot.results.dup-3", data)
	require.NoError(t, err)
	out, code = run(t, "", "submit", "--nats", url, "--id", "dup-3", "--prompt", "#sim text mine", "--wait")
	assert.Equal(t, 0, code, out)
}

// TestNATSURLsRedacted: no password of a NATS URL list, and no text of a
// URL that does not parse, is ever printed; secrets can come from files.
func TestNATSURLsRedacted(t *testing.T) {
	t.Parallel()
	const pw1, pw2, tok = "pw-one-5e1f", "pw-two-77ab", "tok-in-url-9c3d"
	list := "nats://u:" + pw1 + "@127.0.0.1:1, nats://u:" + pw2 + "@127.0.0.1:2,nats://" + tok + "@127.0.0.1:3"
	stdout, stderr, code, err := tryRun(nil, "", "results", "--nats", list)
	require.NoError(t, err)
	assert.NotEqual(t, 0, code)
	for _, secret := range []string{pw1, pw2, tok} {
		assert.NotContains(t, stdout+stderr, secret)
	}
	assert.Contains(t, stderr, "127.0.0.1:2", "every URL is shown, redacted")

	const broken = "nats://u:pw-broken-31@[::1"
	stdout, stderr, code, err = tryRun(nil, "", "results", "--nats", "nats://127.0.0.1:1,"+broken)
	require.NoError(t, err)
	assert.Equal(t, 2, code, stderr)
	assert.Contains(t, stderr, "URL 2 of 2 does not parse")
	assert.NotContains(t, stdout+stderr, "pw-broken-31")

	// --password-file and --token-file (and their JETPILOT_ forms) read the
	// secret from a file; a missing file is an error that shows no secret.
	s, _, _ := testnats.Start(t)
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	require.NoError(t, os.WriteFile(pwFile, []byte(pw1+"\n"), 0o600))
	_, stderr, code, err = tryRun(nil, "", "setup", "--nats", testnats.URL(s), "--user", "u", "--password-file", pwFile)
	require.NoError(t, err)
	assert.Equal(t, 0, code, stderr)
	_, stderr, code, err = tryRun([]string{"JETPILOT_TOKEN_FILE=" + filepath.Join(dir, "missing")}, "", "results", "--nats", testnats.URL(s))
	require.NoError(t, err)
	assert.NotEqual(t, 0, code)
	assert.Contains(t, stderr, "--token-file")
	_, stderr, code, err = tryRun(nil, "", "results", "--nats", testnats.URL(s), "--password", "x", "--password-file", pwFile)
	require.NoError(t, err)
	assert.Equal(t, 2, code, stderr)
	assert.NotContains(t, stderr, pw1)
}

// TestAgentTLSFlags: the agent TLS flags want an https URL and a key with
// the certificate, and plain http to a host that is not loopback is
// warned about.
func TestAgentTLSFlags(t *testing.T) {
	t.Parallel()
	s, _, _ := testnats.Start(t)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	require.NoError(t, os.WriteFile(ca, []byte("not a certificate"), 0o600))
	_, stderr, code, err := tryRun(nil, "", "worker", "--nats", testnats.URL(s), "--agent-url", "http://127.0.0.1:1", "--agent-tlsca", ca)
	require.NoError(t, err)
	assert.Equal(t, 2, code, stderr)
	assert.Contains(t, stderr, "no PEM certificate")
	_, stderr, code, err = tryRun(nil, "", "worker", "--nats", testnats.URL(s), "--agent-url", "https://127.0.0.1:1", "--agent-tlscert", ca)
	require.NoError(t, err)
	assert.Equal(t, 2, code, stderr)
	assert.Contains(t, stderr, "together")

	// 192.0.2.0/24 is TEST-NET-1: nothing answers, and nothing is dialled
	// before the warning.
	w := start(t, nil, "worker", "--nats", testnats.URL(s), "--agent-url", "http://192.0.2.1:4096")
	require.Eventually(t, func() bool { return strings.Contains(w.Output(), "plain http") }, waitFor, 20*time.Millisecond)
}
