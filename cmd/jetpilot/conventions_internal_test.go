package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// execute runs the command line in process and returns its exit code as
// main would give it.
func execute(t *testing.T, args ...string) (int, string) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK, out.String()
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code, err.Error()
	}
	return exitFailed, err.Error()
}

// leaves are the paths of every command that runs something.
func leaves(c *cobra.Command, path []string) [][]string {
	var out [][]string
	for _, sub := range c.Commands() {
		if sub.Hidden || sub.Name() == "help" || sub.Name() == "completion" {
			continue
		}
		p := append(append([]string{}, path...), sub.Name())
		if sub.HasSubCommands() {
			out = append(out, leaves(sub, p)...)
		} else {
			out = append(out, p)
		}
	}
	return out
}

// Every command refuses stray arguments and unknown flags with exit 2,
// before it connects anywhere (the URL is one nothing listens on).
func TestEveryCommandExits2OnUsageErrors(t *testing.T) {
	all := leaves(newRootCmd(), nil)
	require.GreaterOrEqual(t, len(all), 20, "every command is walked")
	for _, path := range all {
		name := strings.Join(path, " ")
		code, msg := execute(t, append(path, "--nats", "nats://127.0.0.1:1", "stray-1", "stray-2", "stray-3", "stray-4", "stray-5")...)
		assert.Equal(t, exitUsage, code, "%s with stray arguments: %s", name, msg)
		code, msg = execute(t, append(path, "--no-such-flag")...)
		assert.Equal(t, exitUsage, code, "%s with an unknown flag: %s", name, msg)
	}
	for _, args := range [][]string{{"no-such-command"}, {"policy", "no-such-command"}, {"keys", "nope"}} {
		code, msg := execute(t, args...)
		assert.Equal(t, exitUsage, code, "%v: %s", args, msg)
		assert.Contains(t, msg, "unknown command")
	}
	// Bad values are usage errors too, before connecting.
	for _, args := range [][]string{
		{"jobs", "--limit", "0"}, {"jobs", "--state", "done"}, {"jobs", "--after", "7"}, {"jobs", "--profile", "a b"},
		{"dead", "--limit", "100000"}, {"job", "bad id!"}, {"requeue", "x", "--id", "bad id!"}, {"results", "--job", "bad id!"},
		{"events", "bad id!"}, {"submit", "--prompt", "x", "--wait", "--wait-timeout", "-1s"},
		{"approve", "apr_1", "--allow", "--wait-timeout", "-1s"}, {"submit", "--prompt", "x", "--wait-timeout", "soon"},
	} {
		code, msg := execute(t, append(args, "--nats", "nats://127.0.0.1:1")...)
		assert.Equal(t, exitUsage, code, "%v: %s", args, msg)
	}
	code, out := execute(t)
	assert.Equal(t, exitOK, code, "jetpilot alone prints its help")
	assert.Contains(t, out, "Available Commands")
}

func TestFormatVersion(t *testing.T) {
	t.Parallel()
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.4.0"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0f5cc42abc"}, {Key: "vcs.time", Value: "2026-12-01T10:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	assert.Equal(t, "jetpilot v1.4.0 (0f5cc42abc 2026-12-01T10:00:00Z, modified) go1.26.8", formatVersion(bi))
	assert.Equal(t, "jetpilot (devel) go1.26.8", formatVersion(&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}}))
}

func TestWaitBudget(t *testing.T) {
	t.Parallel()
	assert.Equal(t, 20*time.Minute+queueAllowance, waitBudget(schemas.Job{Timeout: "20m"}, 0), "the job's timeout plus queueing")
	assert.Equal(t, defaultJobTimeout+queueAllowance, waitBudget(schemas.Job{}, 0), "a job without a timeout gets the workers' default")
	assert.Equal(t, 3*time.Second, waitBudget(schemas.Job{Timeout: "20m"}, 3*time.Second), "--wait-timeout wins")
}

// settingsOf parses args as the global flags and weighs them.
func settingsOf(t *testing.T, args ...string) (connSettings, error) {
	t.Helper()
	g := &globalFlags{}
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	g.register(fs)
	require.NoError(t, fs.Parse(args))
	return g.settings()
}

// writeContext writes a natscli context file into dir/nats/context.
func writeContext(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, "nats", "context", name+".json")
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o700))
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

// The precedence README documents: flag > NATS_* variable > context >
// default, field by field; credentials as a whole.
func TestConnSettingsPrecedence(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", dir)
	for _, v := range []string{"NATS_CONTEXT", "NATS_URL", "NATS_CREDS", "NATS_NKEY", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_CERT", "NATS_KEY", "NATS_CA"} {
		t.Setenv(v, "")
	}
	t.Setenv("HOME", dir)

	s, err := settingsOf(t)
	require.NoError(t, err)
	assert.Equal(t, "nats://127.0.0.1:4222", s.url, "no context, no variable: the default")
	assert.Empty(t, s.context)

	writeContext(t, dir, "prod", `{"description":"ignored","url":"nats://prod:4222","user":"alice","password":"env://PROD_PW",
		"ca":"~/ca.pem","cert":"$CERTS/c.pem","key":"file://$CERTS/k.pem","jetstream_domain":"hub","inbox_prefix":"_I.alice","color_scheme":"dark"}`)
	writeContext(t, dir, "dev", `{"url":"nats://dev:4222","creds":"/dev.creds","token":"tok-dev"}`)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "nats", "context.txt"), []byte("prod\n"), 0o600))
	t.Setenv("PROD_PW", "pw-from-env")
	t.Setenv("CERTS", "/etc/certs")

	s, err = settingsOf(t)
	require.NoError(t, err)
	assert.Equal(t, "prod", s.context, "the selected context (context.txt)")
	assert.Equal(t, "nats://prod:4222", s.url)
	assert.Equal(t, "alice", s.user)
	assert.Equal(t, "pw-from-env", s.password, "env:// resolves")
	assert.Equal(t, filepath.Join(dir, "ca.pem"), s.ca, "~ expands")
	assert.Equal(t, "/etc/certs/c.pem", s.cert, "variables expand")
	assert.Equal(t, "/etc/certs/k.pem", s.key, "file:// is a path")
	assert.Equal(t, "hub", s.jsDomain)
	assert.Equal(t, "_I.alice", s.inboxPrefix)

	t.Setenv("NATS_CONTEXT", "dev")
	s, err = settingsOf(t)
	require.NoError(t, err)
	assert.Equal(t, "dev", s.context, "NATS_CONTEXT over the selected one")
	assert.Equal(t, "/dev.creds", s.creds)
	assert.Equal(t, "tok-dev", s.token)
	assert.Empty(t, s.user)

	s, err = settingsOf(t, "--context", "prod")
	require.NoError(t, err)
	assert.Equal(t, "prod", s.context, "--context over NATS_CONTEXT")

	t.Setenv("NATS_URL", "nats://env:4222")
	s, err = settingsOf(t, "--context", "prod")
	require.NoError(t, err)
	assert.Equal(t, "nats://env:4222", s.url, "NATS_URL over the context")
	s, err = settingsOf(t, "--context", "prod", "--nats", "nats://flag:4222")
	require.NoError(t, err)
	assert.Equal(t, "nats://flag:4222", s.url, "--nats over NATS_URL")

	t.Setenv("NATS_CREDS", "/env.creds")
	s, err = settingsOf(t, "--context", "prod")
	require.NoError(t, err)
	assert.Equal(t, "/env.creds", s.creds)
	assert.Empty(t, s.user, "credentials from the environment replace the context's whole")
	assert.Empty(t, s.password)
	assert.Equal(t, "hub", s.jsDomain, "other fields still come from the context")

	tok := filepath.Join(dir, "token")
	require.NoError(t, os.WriteFile(tok, []byte("tok-file\n"), 0o600))
	s, err = settingsOf(t, "--context", "prod", "--token-file", tok, "--js-domain", "edge", "--tlsca", "/flag-ca.pem")
	require.NoError(t, err)
	assert.Equal(t, "tok-file", s.token)
	assert.Empty(t, s.creds, "flag credentials replace the environment's")
	assert.Equal(t, "edge", s.jsDomain, "--js-domain over the context")
	assert.Equal(t, "/flag-ca.pem", s.ca)
	t.Setenv("NATS_CA", "/env-ca.pem")
	s, err = settingsOf(t, "--context", "prod")
	require.NoError(t, err)
	assert.Equal(t, "/env-ca.pem", s.ca, "NATS_CA over the context")

	// A context file by path.
	p := filepath.Join(dir, "elsewhere.json")
	require.NoError(t, os.WriteFile(p, []byte(`{"url":"nats://file:4222"}`), 0o600))
	t.Setenv("NATS_URL", "")
	s, err = settingsOf(t, "--context", p)
	require.NoError(t, err)
	assert.Equal(t, "nats://file:4222", s.url)

	// What cannot be honoured is refused, by name, never by value.
	writeContext(t, dir, "nsc", `{"nsc":"nsc://op/acct/user"}`)
	writeContext(t, dir, "op", `{"user":"bob","password":"op://vault/item/secret-pw"}`)
	writeContext(t, dir, "broken", `{"url":`)
	for name, want := range map[string]string{
		"nsc": "sets nsc", "op": "op: reference", "broken": "not valid JSON", "missing": `unknown NATS context "missing"`, "a..b": "not a context name",
	} {
		_, err := settingsOf(t, "--context", name)
		require.Error(t, err, name)
		assert.Contains(t, err.Error(), want, name)
		assert.NotContains(t, err.Error(), "secret-pw")
		var ee *exitError
		require.True(t, errors.As(err, &ee), name)
		assert.Equal(t, exitUsage, ee.code, name)
	}
	_, err = settingsOf(t, "--context", "missing")
	assert.ErrorContains(t, err, "known: broken, dev, nsc, op, prod", "the error lists the known contexts")
	_, err = settingsOf(t, "--context", "prod", "--js-domain", "a.b")
	assert.ErrorContains(t, err, "one subject token")
}
