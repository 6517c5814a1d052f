package console_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/console"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/signing"
)

func TestParseUsersReportsEveryProblem(t *testing.T) {
	good, err := console.HashPassword("pw")
	require.NoError(t, err)
	_, err = console.ParseUsers([]byte(`users:
  - {name: a, password_hash: "` + good + `", role: approver}
  - {name: a, password_hash: "` + good + `", role: viewer}
  - {name: b, password_hash: "plain", role: viewer}
  - {name: c, password_hash: "` + good + `", role: admin}
`))
	require.ErrorIs(t, err, console.ErrBadUsers)
	for _, want := range []string{`user "a" is listed twice`, "(b): password_hash is not a bcrypt hash", `(c): role must be viewer or approver, got "admin"`} {
		assert.Contains(t, err.Error(), want)
	}
	_, err = console.ParseUsers([]byte(`users: [{name: a, password_hash: x, role: viewer, extra: 1}]`))
	require.ErrorIs(t, err, console.ErrBadUsers, "unknown fields are an error")
	_, err = console.ParseUsers([]byte(`users: []`))
	require.ErrorIs(t, err, console.ErrBadUsers)
}

func TestRequeueID(t *testing.T) {
	assert.Equal(t, "deploy-42:r7", queue.RequeueID("deploy-42", 7))
	long := queue.RequeueID(strings.Repeat("x", 128), 12345)
	assert.Len(t, long, 128)
	assert.True(t, strings.HasSuffix(long, ":r12345"))
	assert.True(t, schemas.ValidJobID(long))
}

// session is a signed-in HTTP client (no browser) and its CSRF token.
type session struct {
	c    *http.Client
	base string
	csrf string
}

var csrfAttr = regexp.MustCompile(`data-csrf="([^"]+)"`)

func signInHTTP(t *testing.T, base, user, password string) *session {
	t.Helper()
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	c := &http.Client{Jar: jar, Timeout: waitFor}
	r, err := c.PostForm(base+"/login", url.Values{"user": {user}, "password": {password}})
	require.NoError(t, err)
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	require.Equal(t, http.StatusOK, r.StatusCode, "sign-in ends on the jobs page")
	m := csrfAttr.FindSubmatch(body)
	require.NotNil(t, m, "the page carries the CSRF token")
	return &session{c: c, base: base, csrf: string(m[1])}
}

func (s *session) post(t *testing.T, path, contentType, body string, headers map[string]string) (int, string) {
	t.Helper()
	code, text, err := s.tryPost(path, contentType, body, headers)
	require.NoError(t, err)
	return code, text
}

// tryPost is post for use off the test goroutine (require.Eventually's).
func (s *session) tryPost(path, contentType, body string, headers map[string]string) (int, string, error) {
	req, err := http.NewRequest(http.MethodPost, s.base+path, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", contentType)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	r, err := s.c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	return r.StatusCode, string(b), err
}

func TestSignInCookieAndCSRF(t *testing.T) {
	f := newFleet(t)
	c := &http.Client{Timeout: waitFor, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	r, err := c.Get(f.url + "/jobs")
	require.NoError(t, err)
	r.Body.Close()
	assert.Equal(t, http.StatusSeeOther, r.StatusCode, "pages need a sign-in")
	assert.True(t, strings.HasPrefix(r.Header.Get("Location"), "/login"))

	r, err = c.PostForm(f.url+"/login", url.Values{"user": {"alice"}, "password": {"wrong"}})
	require.NoError(t, err)
	r.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, r.StatusCode)
	assert.Empty(t, r.Cookies())

	r, err = c.PostForm(f.url+"/login", url.Values{"user": {"alice"}, "password": {"alice-pw"}})
	require.NoError(t, err)
	r.Body.Close()
	require.Equal(t, http.StatusSeeOther, r.StatusCode)
	require.Len(t, r.Cookies(), 1)
	ck := r.Cookies()[0]
	assert.True(t, ck.HttpOnly)
	assert.Equal(t, http.SameSiteStrictMode, ck.SameSite)
	assert.Contains(t, r.Header.Get("Content-Security-Policy"), "script-src 'self'")

	s := signInHTTP(t, f.url, "alice", "alice-pw")
	code, _ := s.post(t, "/approvals/decide", "application/json", `{}`, nil)
	assert.Equal(t, http.StatusForbidden, code, "no CSRF token")
	code, _ = s.post(t, "/approvals/decide", "application/json", `{}`, map[string]string{"X-CSRF-Token": s.csrf, "Origin": "http://evil.example"})
	assert.Equal(t, http.StatusForbidden, code, "another origin")
	code, body := s.post(t, "/approvals/decide", "application/json", `{"approval_id": "x"}`, map[string]string{"X-CSRF-Token": s.csrf})
	assert.Equal(t, http.StatusBadRequest, code, body)
	assert.Contains(t, body, "job_id", "a bad decision is answered field by field")
}

// TestDecideChecksTheSigner: the server refuses early, with reasons, what
// the worker would refuse: an unsigned decision under signed decisions, a
// key that is another approver's, a decision for an approval not pending.
func TestDecideChecksTheSigner(t *testing.T) {
	f := newFleet(t)
	f.startWorker()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	req := f.pausedDeploy("sig-1")
	s := signInHTTP(t, f.url, "alice", "alice-pw")
	// The index sees the pause shortly after the request is published.
	require.Eventually(t, func() bool {
		code, body, err := s.tryPost("/approvals/decide", "application/json",
			`{"approval_id":"`+req.ApprovalID+`","job_id":"sig-1","all":"allow"}`, map[string]string{"X-CSRF-Token": s.csrf})
		return err == nil && code == http.StatusBadRequest && strings.Contains(body, "requires signed decisions")
	}, waitFor, 50*time.Millisecond, "an unsigned decision under signed decisions is refused")

	post := func(d schemas.Decision) (int, string) {
		b, err := json.Marshal(d)
		require.NoError(t, err)
		return s.post(t, "/approvals/decide", "application/json", string(b), map[string]string{"X-CSRF-Token": s.csrf})
	}
	bob := newApprover(t, "bob")
	d := schemas.Decision{ApprovalID: req.ApprovalID, JobID: "sig-1", All: schemas.DecideAllow, PendingDigest: req.PendingDigest,
		DecidedAt: time.Now().UTC().Truncate(time.Second)}
	require.NoError(t, signing.SignDecision(&d, bob.seed))
	code, body := post(d)
	assert.Equal(t, http.StatusForbidden, code)
	assert.Contains(t, body, "not an approver's", "a key the policy does not list")

	other := d
	other.ApprovalID = "apr_other"
	require.NoError(t, signing.SignDecision(&other, f.alice.seed))
	code, body = post(other)
	assert.Equal(t, http.StatusConflict, code)
	assert.Contains(t, body, "not pending")

	tampered := d
	require.NoError(t, signing.SignDecision(&tampered, f.alice.seed))
	tampered.All = schemas.DecideDeny
	code, body = post(tampered)
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Contains(t, body, "does not verify")

	good := d
	require.NoError(t, signing.SignDecision(&good, f.alice.seed))
	code, body = post(good)
	require.Equal(t, http.StatusOK, code, body)
	res, err := f.client.WaitResult(ctx, "sig-1")
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
}

// TestInboxShowsVotes: with a quorum of two, the inbox shows who has
// approved and how many are still needed once alice's vote is in.
func TestInboxShowsVotes(t *testing.T) {
	f := newFleetQuorum(t, 2)
	f.startWorker()
	req := f.pausedDeploy("q-1")
	s := signInHTTP(t, f.url, "alice", "alice-pw")
	d := schemas.Decision{ApprovalID: req.ApprovalID, JobID: "q-1", All: schemas.DecideAllow, PendingDigest: req.PendingDigest,
		DecidedBy: "alice", DecidedAt: time.Now().UTC().Truncate(time.Second)}
	require.NoError(t, signing.SignDecision(&d, f.alice.seed))
	b, err := json.Marshal(d)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		code, _, err := s.tryPost("/approvals/decide", "application/json", string(b), map[string]string{"X-CSRF-Token": s.csrf})
		return err == nil && code == http.StatusOK
	}, waitFor, 50*time.Millisecond, "the decision is accepted once the index has the pause")
	var page string
	require.Eventually(t, func() bool {
		r, err := s.c.Get(f.url + "/approvals?fragment=1")
		if err != nil {
			return false
		}
		defer r.Body.Close()
		body, err := io.ReadAll(r.Body)
		page = string(body)
		return err == nil && strings.Contains(page, `<span class="chip ok">alice</span>`)
	}, waitFor, 50*time.Millisecond, "alice's vote shows")
	assert.Contains(t, page, "still needed: 1")
	assert.Contains(t, page, "Needs 2 approvals")
}

// TestLiveStreamEndsWithServer: a live stream open in a client ends when
// the console stops (its request context ends), and Serve returns.
func TestLiveStreamEndsWithServer(t *testing.T) {
	f := newFleet(t)
	users, err := console.ParseUsers([]byte(`users: [{name: v, password_hash: "` + mustHash(t, "pw") + `", role: viewer}]`))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	srv, err := console.New(ctx, console.Config{JS: f.js, Auth: console.Auth{Users: users}})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	sctx, stop := context.WithCancel(context.Background())
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, ln) }()

	s := signInHTTP(t, "http://"+ln.Addr().String(), "v", "pw")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/live?page=jobs", nil)
	require.NoError(t, err)
	req.Header.Set("Accept", "text/event-stream")
	c := &http.Client{Jar: s.c.Jar} // no timeout: the stream is long-lived
	r, err := c.Do(req)
	require.NoError(t, err)
	defer r.Body.Close()
	require.Equal(t, "text/event-stream", r.Header.Get("Content-Type"))
	line, err := bufio.NewReader(r.Body).ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "event: changed\n", line, "the first refresh covers what changed before the subscription")

	stop()
	select {
	case err := <-served:
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("Serve did not return with a live stream open")
	}
	_, err = io.ReadAll(r.Body)
	assert.NoError(t, err, "the stream ended cleanly")
}

func mustHash(t *testing.T, pw string) string {
	t.Helper()
	h, err := console.HashPassword(pw)
	require.NoError(t, err)
	return h
}
