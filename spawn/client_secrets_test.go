package spawn

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
)

// echoAuthServer answers every request with status and an error body that
// echoes the request's Authorization header, the way a careless server or
// proxy does, padded to pad bytes.
func echoAuthServer(t *testing.T, status, pad int) string {
	t.Helper()
	return rawServer(t, func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		body, _ := json.Marshal(map[string]string{
			"error":      "refused header Authorization: " + auth + strings.Repeat(" x", pad/2) + " again " + auth,
			"code":       "bad " + auth,
			"request_id": "req_" + strings.TrimPrefix(auth, "Bearer "),
		})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(body)
	})
}

func TestClientScrubsEchoedToken(t *testing.T) {
	t.Parallel()
	const secret = "tok-3c1a9f0e5b7d"
	for _, status := range []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusInternalServerError} {
		for _, pad := range []int{0, 10 << 10} {
			base := echoAuthServer(t, status, pad)
			c := newTestClient(t, base, secret)
			_, err := c.CreateSession(t.Context(), CreateSessionRequest{Title: "t"}, "k")
			var ae *APIError
			require.ErrorAs(t, err, &ae)
			assert.Equal(t, status, ae.StatusCode)
			for _, text := range []string{err.Error(), ae.Message, ae.Code, ae.RequestID, fmt.Sprintf("%+v %#v", err, ae)} {
				assert.NotContains(t, text, secret)
			}
			assert.Contains(t, ae.Message, "Bearer [REDACTED]")
			if pad > 0 {
				assert.LessOrEqual(t, len(ae.Message), MaxErrorMessageBytes+64, "the message is capped")
				assert.Contains(t, ae.Message, "bytes cut)")
			}
			assert.Equal(t, status != http.StatusBadRequest, IsTransient(err), "scrubbing keeps the classification")

			_, err = c.OpenEvents(t.Context(), "s1", StreamOptions{})
			require.ErrorAs(t, err, &ae)
			assert.NotContains(t, err.Error(), secret)
		}
	}
}

func TestClientScrubsAnyBearer(t *testing.T) {
	t.Parallel()
	// A credential the client never had (a proxy's own, another
	// tenant's) is scrubbed too, in any case and however it is quoted.
	base := rawServer(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"error":"upstream said: authorization: bearer other.secret-XYZ, \"BEARER   b64+/=tok\" Bearer%20urltok"}`))
	})
	_, err := newTestClient(t, base, "").Health(t.Context())
	require.Error(t, err)
	for _, s := range []string{"other.secret-XYZ", "b64+/=tok", "urltok"} {
		assert.NotContains(t, err.Error(), s)
	}
	assert.Contains(t, err.Error(), "bearer [REDACTED]")
}

func TestScrubErrorKeepsTheChain(t *testing.T) {
	t.Parallel()
	inner := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("proxy said Bearer abc123 and tok-xyz")}
	err := scrubError(markTransient(fmt.Errorf("agent server: health: %w", inner)), "tok-xyz")
	assert.NotContains(t, err.Error(), "abc123")
	assert.NotContains(t, err.Error(), "tok-xyz")
	assert.True(t, IsTransient(err))
	var oe *net.OpError
	assert.ErrorAs(t, err, &oe)
	plain := errors.New("nothing secret")
	assert.Same(t, plain, scrubError(plain, "tok"), "an error without credentials is returned as is")
	assert.Equal(t, "ab… (3 more bytes cut)", capText("abcde", 2))
	assert.Equal(t, "… (2 more bytes cut)", capText("é", 1), "never cuts a character in half")
}

// TestClientRefusesRedirects: a 3xx from the agent server is an error
// naming the status and the host it pointed to (without credentials), and
// nothing, least of all the token, reaches that host: net/http would keep
// the Authorization header on a redirect to the same host on another port.
func TestClientRefusesRedirects(t *testing.T) {
	t.Parallel()
	const secret = "tok-redirect-9f2b"
	var reached atomic.Int32
	var mu sync.Mutex
	var leaked []string
	other := testsupport.LocalServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		mu.Lock()
		leaked = append(leaked, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte(`{"status":"ok","version":"1","uptime_seconds":1}`))
	}), nil)
	otherHost := strings.TrimPrefix(other.URL, "http://")
	for _, status := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		base := rawServer(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Location", "http://user:hunter2@"+otherHost+r.URL.Path)
			w.WriteHeader(status)
		})
		for _, c := range []*Client{
			newTestClient(t, base, secret),
			mustClient(t, ClientOptions{BaseURL: base, Token: secret}),
			mustClient(t, ClientOptions{BaseURL: base, Token: secret, DirectEventStreams: true}),
			mustClient(t, ClientOptions{BaseURL: base, Token: secret, HTTPClient: &http.Client{}}),
		} {
			_, err := c.Health(t.Context())
			requireRedirect(t, err, status, otherHost)
			_, err = c.CreateSession(t.Context(), CreateSessionRequest{Title: "t"}, "k")
			requireRedirect(t, err, status, otherHost)
			_, err = c.OpenEvents(t.Context(), "s1", StreamOptions{})
			requireRedirect(t, err, status, otherHost)
			assert.NotContains(t, err.Error(), secret)
		}
	}
	// No Location at all.
	base := rawServer(t, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusMultipleChoices) })
	_, err := newTestClient(t, base, secret).OpenEvents(t.Context(), "s1", StreamOptions{})
	var re *RedirectError
	require.ErrorAs(t, err, &re)
	assert.Contains(t, err.Error(), "no Location")

	mu.Lock()
	defer mu.Unlock()
	assert.Zero(t, reached.Load(), "the other port was reached, with Authorization %q", leaked)
}

func mustClient(t *testing.T, opts ClientOptions) *Client {
	t.Helper()
	c, err := NewClient(opts)
	require.NoError(t, err)
	return c
}

func requireRedirect(t *testing.T, err error, status int, host string) {
	t.Helper()
	var re *RedirectError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, status, re.StatusCode)
	assert.Equal(t, host, re.Location)
	assert.Contains(t, err.Error(), fmt.Sprint(status))
	assert.Contains(t, err.Error(), host)
	assert.NotContains(t, err.Error(), "hunter2")
	assert.NotContains(t, err.Error(), "user")
	assert.False(t, IsTransient(err))
}

// TestClientTLSConfig: with ClientOptions.TLSConfig the client trusts a
// private CA, for calls and event streams alike (the streams go through
// net/http even with DirectEventStreams).
func TestClientTLSConfig(t *testing.T) {
	t.Parallel()
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/health" {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"status":"ok","version":"1","uptime_seconds":1}`))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	_ = ts.Listener.Close()
	ts.Listener = ln
	ts.StartTLS()
	t.Cleanup(ts.Close)

	_, err = mustClient(t, ClientOptions{BaseURL: ts.URL}).Health(t.Context())
	require.Error(t, err, "an unknown CA is refused")

	pool := x509.NewCertPool()
	pool.AddCert(ts.Certificate())
	c := mustClient(t, ClientOptions{BaseURL: ts.URL, TLSConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, DirectEventStreams: true})
	assert.Nil(t, c.direct, "https streams go through net/http")
	h, err := c.Health(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "ok", h.Status)
	s, err := c.OpenEvents(t.Context(), "s1", StreamOptions{})
	require.NoError(t, err)
	require.NoError(t, s.Close())
}
