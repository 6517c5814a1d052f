package main_test

import (
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

var consoleLine = regexp.MustCompile(`console: (http://\S+) \(sign in with the token in (\S+)\)`)

// TestDevServesConsole: `jetpilot dev` serves the console, prints its URL
// and where the sign-in token is (never the token), and the token signs in.
func TestDevServesConsole(t *testing.T) {
	dir := t.TempDir()
	dev := start(t, nil, "dev", "--dir", dir, "--nats-port", "-1", "--console-addr", "127.0.0.1:0")
	var m []string
	require.Eventually(t, func() bool {
		m = consoleLine.FindStringSubmatch(dev.Output())
		return m != nil
	}, waitFor, 20*time.Millisecond, "dev prints the console URL")
	assert.Equal(t, filepath.Join(dir, "console-token"), m[2])
	tok, err := os.ReadFile(m[2])
	require.NoError(t, err)
	info, err := os.Stat(m[2])
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	assert.NotContains(t, dev.Output(), strings.TrimSpace(string(tok)), "the token is not printed")

	c := &http.Client{Timeout: waitFor, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	r, err := c.PostForm(m[1]+"/login", url.Values{"token": {strings.TrimSpace(string(tok))}})
	require.NoError(t, err)
	r.Body.Close()
	assert.Equal(t, http.StatusSeeOther, r.StatusCode)
	assert.Len(t, r.Cookies(), 1, "a session")

	require.Eventually(t, func() bool { return strings.Contains(dev.Output(), "worker started") }, waitFor, 20*time.Millisecond)
	require.NoError(t, dev.Cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 0, dev.ExitCode(t, waitFor), "dev exits 0 on SIGTERM")
}

func TestConsoleUsage(t *testing.T) {
	_, stderr, code, err := tryRun(nil, "", "console", "--nats", "nats://127.0.0.1:1")
	require.NoError(t, err)
	assert.Equal(t, 2, code, stderr)
	assert.Contains(t, stderr, "--users-file or --login-token-file")

	bad := filepath.Join(t.TempDir(), "users.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("users: [{name: a, password_hash: plain, role: viewer}]\n"), 0o600))
	_, stderr, code, err = tryRun(nil, "", "console", "--users-file", bad)
	require.NoError(t, err)
	assert.Equal(t, 2, code, stderr)
	assert.Contains(t, stderr, "not a bcrypt hash")

	out, code := run(t, "s3cret-pass\n", "console", "passwd")
	require.Equal(t, 0, code, out)
	hash := strings.TrimSpace(out)
	assert.NoError(t, bcrypt.CompareHashAndPassword([]byte(hash), []byte("s3cret-pass")))
	assert.NotContains(t, out, "s3cret-pass")
}
