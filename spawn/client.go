package spawn

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// ClientOptions configure a Client.
type ClientOptions struct {
	// BaseURL of the agent server, for example "http://127.0.0.1:4096".
	// Required; a trailing slash is trimmed.
	BaseURL string
	// Token is the bearer token. "" sends no Authorization header, as the
	// API asks when the server has no token.
	Token string
	// TokenFile, when set, holds the bearer token (surrounding white space
	// is trimmed) and wins over Token. The real server makes a new random
	// token on every start, so the file is read again whenever the server
	// answers 401 (the request is then retried once with the new token) and
	// whenever ReloadToken is called (the worker does so on a timer, to pick
	// up a rotated token before the next request fails).
	TokenFile string
	// HTTPClient defaults to a client with dial, TLS and response-header
	// timeouts but no overall Timeout, because the event stream is
	// long-lived. Whichever client is used, redirects are never followed
	// (the client works on a copy whose CheckRedirect refuses them): a 3xx
	// answer is a *RedirectError.
	HTTPClient *http.Client
	// TLSConfig, when set, is the default client's TLS configuration for
	// an https BaseURL (a private CA, a client certificate). Ignored when
	// HTTPClient is set.
	TLSConfig *tls.Config
	// DirectEventStreams reads each event stream of a plain-http server
	// reached without a proxy over a connection of its own, read by the
	// goroutine that follows the run, instead of through HTTPClient: one
	// goroutine per run in flight instead of three, and no transport state
	// per stream (see directSSE). The other calls are unchanged, but as the
	// streams no longer take pooled connections, those calls find more idle
	// ones (and net/http replays an Idempotency-Key request whose reused
	// connection broke). Ignored when HTTPClient is set, and for an https
	// BaseURL, whose streams go through net/http.
	DirectEventStreams bool
	// UserAgent defaults to "jetpilot".
	UserAgent string
	// RequestTimeout bounds every call except the event stream, so a server
	// that accepts a request and never answers cannot block a worker.
	// Default 30s; negative means none.
	RequestTimeout time.Duration
}

// Client talks to one agent server. It is safe for concurrent use.
type Client struct {
	base       string
	token      atomic.Pointer[string]
	prevToken  atomic.Pointer[string] // the token before the last reload, scrubbed from errors too
	tokenFile  string
	tokenMu    sync.Mutex // serialises reads of tokenFile
	hc         *http.Client
	direct     *directSSE // nil: event streams go through hc as well
	userAgent  string
	reqTimeout time.Duration
}

// maxErrorBody bounds how much of an error answer is read.
const maxErrorBody = 64 << 10

// maxJSONBody bounds how much of a JSON answer is read (message lists can be
// large, but not unbounded).
const maxJSONBody = 16 << 20

// NewClient returns a client for opts.BaseURL.
func NewClient(opts ClientOptions) (*Client, error) {
	base := strings.TrimRight(strings.TrimSpace(opts.BaseURL), "/")
	if base == "" {
		return nil, errors.New("spawn: new client: BaseURL is required")
	}
	u, err := url.Parse(base)
	if err != nil {
		// Not the url.Error: it quotes the text, which may hold a password.
		return nil, errors.New("spawn: new client: BaseURL does not parse")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("spawn: new client: BaseURL %q: scheme must be http or https", u.Redacted())
	}
	if u.Host == "" {
		return nil, fmt.Errorf("spawn: new client: BaseURL %q has no host", u.Redacted())
	}
	if u.User != nil {
		return nil, errors.New("spawn: new client: BaseURL must not carry credentials; use Token")
	}
	if strings.ContainsAny(opts.Token, "\r\n") {
		return nil, errors.New("spawn: new client: Token contains a line break")
	}
	c := &Client{
		base:       base,
		tokenFile:  opts.TokenFile,
		hc:         opts.HTTPClient,
		userAgent:  opts.UserAgent,
		reqTimeout: opts.RequestTimeout,
	}
	c.token.Store(&opts.Token)
	if c.tokenFile != "" {
		if _, err := c.ReloadToken(); err != nil {
			return nil, fmt.Errorf("spawn: new client: %w", err)
		}
	}
	if c.hc == nil {
		c.hc = defaultHTTPClient(opts.TLSConfig)
		if opts.DirectEventStreams && u.Scheme == "http" {
			c.direct = newDirectSSE(c.hc.Transport.(*http.Transport))
		}
	} else {
		hc := *c.hc
		c.hc = &hc
	}
	c.hc.CheckRedirect = refuseRedirect
	if c.userAgent == "" {
		c.userAgent = "jetpilot"
	}
	if c.reqTimeout == 0 {
		c.reqTimeout = 30 * time.Second
	}
	return c, nil
}

// Connection buffers of the default transport. Every run in flight pins one
// connection (its event stream) and with it both buffers, so net/http's 4 KiB
// defaults cost 8 KiB per run. Requests are a few hundred bytes of headers
// plus small JSON bodies (larger writes bypass the buffer); reads of the
// event stream are buffered again by the SSE reader, and header lines longer
// than the buffer are still read whole.
const (
	// defaultMaxIdleConns is how many idle keep-alive connections the
	// default transport keeps to the agent server.
	defaultMaxIdleConns = 64

	transportReadBufferSize  = 1 << 10
	transportWriteBufferSize = 1 << 10

	// directReadBufferSize is the read buffer of an event stream on a
	// connection of its own (directSSE), held for the whole run: its
	// frames are a few hundred bytes (a text_delta about 300) and the SSE
	// reader buffers again above it.
	directReadBufferSize = 512
)

// refuseRedirect is every client's CheckRedirect: the 3xx answer itself
// comes back, and the caller turns it into a *RedirectError. Following it
// would send the token on (net/http keeps Authorization for the same host
// on any port).
func refuseRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

func defaultHTTPClient(tlsConfig *tls.Config) *http.Client {
	if tlsConfig != nil {
		tlsConfig = tlsConfig.Clone()
	}
	return &http.Client{
		Transport: &http.Transport{
			TLSClientConfig: tlsConfig,
			Proxy:           http.ProxyFromEnvironment,
			DialContext: (&net.Dialer{
				Timeout:   10 * time.Second,
				KeepAlive: 30 * time.Second,
			}).DialContext,
			ForceAttemptHTTP2: true,
			// A client talks to one agent server: every idle connection
			// may be its, so a worker's concurrent calls reuse them instead
			// of dialing (net/http's per-host default is 2; 16 still made a
			// worker with 64 runs dial for most session and send calls).
			MaxIdleConns:          defaultMaxIdleConns,
			MaxIdleConnsPerHost:   defaultMaxIdleConns,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 30 * time.Second,
			ExpectContinueTimeout: time.Second,
			ReadBufferSize:        transportReadBufferSize,
			WriteBufferSize:       transportWriteBufferSize,
		},
	}
}

// directSSE (ClientOptions.DirectEventStreams) opens event streams over a
// connection of their own, read by the
// goroutine that reads the stream: a run in flight then costs one goroutine
// instead of three (net/http's readLoop and writeLoop per connection) and no
// transport bookkeeping. Such a connection is never reused: a stream lives as
// long as its run. The request on the wire is what net/http sends, less the
// Accept-Encoding: gzip it adds on its own (event streams are not
// compressed). The dial, proxy and header-timeout settings are the
// transport's; whenever they call for more than a plain TCP connection (a
// proxy), do answers (nil, nil) and the caller uses the http.Client. A
// redirect is returned like any answer, never followed: the caller refuses
// it.
type directSSE struct {
	dial          func(ctx context.Context, network, addr string) (net.Conn, error)
	proxy         func(*http.Request) (*url.URL, error)
	headerTimeout time.Duration
}

func newDirectSSE(t *http.Transport) *directSSE {
	d := &directSSE{dial: t.DialContext, proxy: t.Proxy, headerTimeout: t.ResponseHeaderTimeout}
	if d.dial == nil {
		var nd net.Dialer
		d.dial = nd.DialContext
	}
	return d
}

var errHeaderTimeout = errors.New("timeout awaiting response headers")

// do sends req on a new connection and returns the response, whose body owns
// the connection. (nil, nil) means "not for this path: use the client".
func (d *directSSE) do(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "http" {
		return nil, nil
	}
	if d.proxy != nil {
		if pu, err := d.proxy(req); err != nil || pu != nil {
			return nil, nil
		}
	}
	ctx := req.Context()
	host := req.URL.Host
	if req.URL.Port() == "" {
		host = net.JoinHostPort(req.URL.Hostname(), "80")
	}
	conn, err := d.dial(ctx, "tcp", host)
	if err != nil {
		return nil, &url.Error{Op: req.Method, URL: req.URL.String(), Err: err}
	}
	// Cancelling the request (or the stall timer) closes the connection,
	// which ends a blocked write or read.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	fail := func(err error) (*http.Response, error) {
		stop()
		_ = conn.Close()
		return nil, &url.Error{Op: req.Method, URL: req.URL.String(), Err: err}
	}
	if d.headerTimeout > 0 {
		_ = conn.SetDeadline(time.Now().Add(d.headerTimeout))
	}
	bw := bufio.NewWriterSize(conn, transportWriteBufferSize)
	if err := req.Write(bw); err != nil {
		return fail(err)
	}
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	br := bufio.NewReaderSize(conn, directReadBufferSize)
	var resp *http.Response
	for {
		resp, err = http.ReadResponse(br, req)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
				err = fmt.Errorf("%w: %w", errHeaderTimeout, err)
			}
			return fail(err)
		}
		// Skip informational answers (100 Continue, 103 Early Hints).
		if resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		break
	}
	_ = conn.SetDeadline(time.Time{})
	resp.Body = &directBody{ReadCloser: resp.Body, conn: conn, stop: stop}
	return resp, nil
}

// directBody is the body of a directSSE response: closing it closes the
// connection.
type directBody struct {
	io.ReadCloser
	conn net.Conn
	stop func() bool
}

// Close closes the connection only: net/http's Close of a response body
// would drain it (an event stream does not end) and wait for a Read blocked
// in another goroutine. Closing the connection ends such a Read at once.
func (b *directBody) Close() error {
	b.stop()
	return b.conn.Close()
}

// ReloadToken reads ClientOptions.TokenFile again and reports whether the
// token changed. Without a token file it does nothing. The token is never
// part of an error.
func (c *Client) ReloadToken() (changed bool, err error) {
	if c.tokenFile == "" {
		return false, nil
	}
	c.tokenMu.Lock()
	defer c.tokenMu.Unlock()
	b, err := os.ReadFile(c.tokenFile)
	if err != nil {
		return false, fmt.Errorf("read agent token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if strings.ContainsAny(tok, "\r\n") {
		return false, fmt.Errorf("agent token file %s: token contains a line break", c.tokenFile)
	}
	old := c.token.Load()
	if old != nil && *old == tok {
		return false, nil
	}
	c.prevToken.Store(old)
	c.token.Store(&tok)
	return true, nil
}

// retryAfter401 is called when the server refused the token: it re-reads the
// token file and reports whether the request is worth sending again.
func (c *Client) retryAfter401(status int) bool {
	if status != http.StatusUnauthorized || c.tokenFile == "" {
		return false
	}
	changed, err := c.ReloadToken()
	return err == nil && changed
}

// BaseURL returns the server's base URL (without trailing slash).
func (c *Client) BaseURL() string { return c.base }

// Health calls GET /v1/health.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.doJSON(ctx, "health", http.MethodGet, "/v1/health", nil, "", &h)
	return h, err
}

// CreateSession calls POST /v1/sessions. A non-empty idempotencyKey makes a
// retried call return the first call's session.
func (c *Client) CreateSession(ctx context.Context, req CreateSessionRequest, idempotencyKey string) (Session, error) {
	var s Session
	err := c.doJSON(ctx, "create session", http.MethodPost, "/v1/sessions", req, idempotencyKey, &s)
	if err == nil && s.ID == "" {
		err = errors.New("agent server: create session: answer has no session id")
	}
	return s, err
}

// GetSession calls GET /v1/sessions/{id}.
func (c *Client) GetSession(ctx context.Context, id string) (SessionState, error) {
	var s SessionState
	p, err := sessionPath(id)
	if err != nil {
		return s, fmt.Errorf("get session: %w", err)
	}
	err = c.doJSON(ctx, "get session", http.MethodGet, p, nil, "", &s)
	return s, err
}

// SendMessage calls POST /v1/sessions/{id}/messages and returns the run id.
// Empty Message.Role and Type default to "user" and "message". A non-empty
// idempotencyKey makes a retried call return the first call's run id instead
// of starting a second run.
func (c *Client) SendMessage(ctx context.Context, sessionID string, req SendMessageRequest, idempotencyKey string) (string, error) {
	p, err := sessionPath(sessionID, "messages")
	if err != nil {
		return "", fmt.Errorf("send message: %w", err)
	}
	if req.Message.Role == "" {
		req.Message.Role = "user"
	}
	if req.Type == "" {
		req.Type = MessageTypeMessage
	}
	if req.Overrides.isZero() {
		req.Overrides = nil
	}
	if len(req.Context) == 0 {
		req.Context = nil
	}
	var out struct {
		RunID string `json:"run_id"`
	}
	if err := c.doJSON(ctx, "send message", http.MethodPost, p, req, idempotencyKey, &out); err != nil {
		return "", err
	}
	if out.RunID == "" {
		return "", errors.New("agent server: send message: answer has no run_id")
	}
	return out.RunID, nil
}

// Decide calls POST /v1/sessions/{id}/tools/decisions with one decision per
// tool call id. The decisions are sent as given: see WireDecisions for what
// the server does with a reject's content. A non-empty idempotencyKey makes
// a transport retry replay the first answer instead of queueing a second
// copy (which the real server treats as a conflicting decision and kills
// the run for).
func (c *Client) Decide(ctx context.Context, sessionID, runID string, decisions map[string]schemas.ToolDecision, idempotencyKey string) error {
	p, err := sessionPath(sessionID, "tools", "decisions")
	if err != nil {
		return fmt.Errorf("decide: %w", err)
	}
	if runID == "" {
		return errors.New("decide: run id is required")
	}
	if len(decisions) == 0 {
		return errors.New("decide: no decisions")
	}
	for id, d := range decisions {
		switch d.Action {
		case schemas.ActionAccept, schemas.ActionReject:
		case schemas.ActionCustomResult:
			if d.Content == "" {
				return fmt.Errorf("decide: tool call %q: custom_result needs content", id)
			}
		default:
			return fmt.Errorf("decide: tool call %q: unknown action %q", id, d.Action)
		}
	}
	body := struct {
		RunID     string                          `json:"run_id"`
		Decisions map[string]schemas.ToolDecision `json:"decisions"`
	}{runID, decisions}
	return c.doJSON(ctx, "decide", http.MethodPost, p, body, idempotencyKey, nil)
}

// Steer calls POST /v1/sessions/{id}/messages with type "steering" for the
// active run runID: text is injected before the run's next step. It is also
// how a run waiting for tool decisions is woken after a cancel (the server's
// cancel only sets a flag the run checks when it next wakes).
func (c *Client) Steer(ctx context.Context, sessionID, runID, text string) error {
	if runID == "" {
		return errors.New("steer: run id is required")
	}
	p, err := sessionPath(sessionID, "messages")
	if err != nil {
		return fmt.Errorf("steer: %w", err)
	}
	req := SendMessageRequest{Message: MessageInput{Role: "user", Content: text}, Type: MessageTypeSteering, RunID: &runID}
	return c.doJSON(ctx, "steer", http.MethodPost, p, req, "", nil)
}

// Cancel calls POST /v1/sessions/{id}/cancel for runID.
func (c *Client) Cancel(ctx context.Context, sessionID, runID string) error {
	p, err := sessionPath(sessionID, "cancel")
	if err != nil {
		return fmt.Errorf("cancel: %w", err)
	}
	if runID == "" {
		return errors.New("cancel: run id is required")
	}
	body := struct {
		RunID string `json:"run_id"`
	}{runID}
	return c.doJSON(ctx, "cancel", http.MethodPost, p, body, "", nil)
}

// PendingTools calls GET /v1/sessions/{id}/tools/pending.
func (c *Client) PendingTools(ctx context.Context, sessionID string) (Pending, error) {
	var out Pending
	p, err := sessionPath(sessionID, "tools", "pending")
	if err != nil {
		return out, fmt.Errorf("pending tools: %w", err)
	}
	err = c.doJSON(ctx, "pending tools", http.MethodGet, p, nil, "", &out)
	return out, err
}

// Messages calls GET /v1/sessions/{id}/messages. limit <= 0 leaves the
// server's default; offset < 0 is treated as 0.
func (c *Client) Messages(ctx context.Context, sessionID string, limit, offset int) (MessagePage, error) {
	var out MessagePage
	p, err := sessionPath(sessionID, "messages")
	if err != nil {
		return out, fmt.Errorf("messages: %w", err)
	}
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if offset > 0 {
		q.Set("offset", strconv.Itoa(offset))
	}
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	err = c.doJSON(ctx, "messages", http.MethodGet, p, nil, "", &out)
	return out, err
}

// Events opens GET /v1/sessions/{id}/events. lastEventID nil sends no
// Last-Event-ID header (only live events follow); a value N replays the
// events after N still in the server's ring first. The stream lives until ctx
// ends or Close is called.
func (c *Client) Events(ctx context.Context, sessionID string, lastEventID *uint64) (*EventStream, error) {
	return c.OpenEvents(ctx, sessionID, StreamOptions{LastEventID: lastEventID})
}

// StreamOptions configure OpenEvents.
type StreamOptions struct {
	// LastEventID: nil sends no Last-Event-ID header.
	LastEventID *uint64
	// MaxFrameBytes caps one SSE frame; default DefaultMaxFrameBytes.
	MaxFrameBytes int
	// OnActivity, if set, is called from the reading goroutine every time
	// bytes arrive (keep-alives included), so a caller can reset a stall
	// timer.
	OnActivity func()
}

// OpenEvents is Events with more options.
func (c *Client) OpenEvents(ctx context.Context, sessionID string, opts StreamOptions) (*EventStream, error) {
	s, err := c.openEvents(ctx, sessionID, opts)
	return s, c.scrubErr(err)
}

func (c *Client) openEvents(ctx context.Context, sessionID string, opts StreamOptions) (*EventStream, error) {
	p, err := sessionPath(sessionID, "events")
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	var resp *http.Response
	direct := false
	for try := 0; ; try++ {
		req, err := c.newRequest(ctx, http.MethodGet, p, nil, "")
		if err != nil {
			return nil, fmt.Errorf("events: %w", err)
		}
		req.Header.Set("Accept", "text/event-stream")
		req.Header.Set("Cache-Control", "no-cache")
		if opts.LastEventID != nil {
			req.Header.Set("Last-Event-ID", strconv.FormatUint(*opts.LastEventID, 10))
		}
		resp, direct = nil, false
		if c.direct != nil {
			resp, err = c.direct.do(req)
			direct = resp != nil
		}
		if resp == nil && err == nil {
			resp, err = c.hc.Do(req)
		}
		if err != nil {
			return nil, c.transportError("events", ctx, err)
		}
		if resp.StatusCode == http.StatusOK {
			break
		}
		if isRedirect(resp.StatusCode) {
			resp.Body.Close()
			return nil, redirectError("events", resp)
		}
		if try == 0 && c.retryAfter401(resp.StatusCode) {
			resp.Body.Close()
			continue
		}
		defer resp.Body.Close()
		return nil, c.readAPIError("events", resp)
	}
	ct := resp.Header.Get("Content-Type")
	if !strings.HasPrefix(strings.ToLower(ct), "text/event-stream") {
		resp.Body.Close()
		return nil, fmt.Errorf("agent server: events: unexpected content type %q", capText(ct, maxErrorFieldBytes))
	}
	if direct {
		// A chunked body keeps its *Response (for trailers) for the whole
		// stream: do not let it pin the request and both header maps too.
		resp.Request, resp.Header = nil, nil
	}
	return newEventStream(resp.Body, opts), nil
}

// sessionPath builds /v1/sessions/{id}/... with the id path-escaped, and
// rejects ids that are empty.
func sessionPath(id string, rest ...string) (string, error) {
	if strings.TrimSpace(id) == "" {
		return "", errors.New("session id is required")
	}
	p := "/v1/sessions/" + url.PathEscape(id)
	for _, r := range rest {
		p += "/" + r
	}
	return p, nil
}

func (c *Client) newRequest(ctx context.Context, method, path string, body []byte, idempotencyKey string) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	if tok := *c.token.Load(); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if idempotencyKey != "" {
		req.Header.Set("Idempotency-Key", idempotencyKey)
	}
	return req, nil
}

// doJSON sends one request and decodes a 2xx JSON answer into out (nil:
// discard it). Its error is scrubbed of credentials.
func (c *Client) doJSON(ctx context.Context, op, method, path string, in any, idempotencyKey string, out any) error {
	return c.scrubErr(c.doJSONRaw(ctx, op, method, path, in, idempotencyKey, out))
}

func (c *Client) doJSONRaw(ctx context.Context, op, method, path string, in any, idempotencyKey string, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = schemas.Encode(in); err != nil {
			return fmt.Errorf("%s: encode request: %w", op, err)
		}
	}
	rctx := ctx
	if c.reqTimeout > 0 {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeoutCause(ctx, c.reqTimeout, errRequestTimeout)
		defer cancel()
	}
	var resp *http.Response
	for try := 0; ; try++ {
		req, err := c.newRequest(rctx, method, path, body, idempotencyKey)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		resp, err = c.hc.Do(req)
		if err != nil {
			if ctx.Err() == nil && rctx.Err() != nil {
				return markTransient(fmt.Errorf("agent server: %s: %w after %s", op, errRequestTimeout, c.reqTimeout))
			}
			return c.transportError(op, ctx, err)
		}
		if isRedirect(resp.StatusCode) {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
			resp.Body.Close()
			return redirectError(op, resp)
		}
		if try > 0 || !c.retryAfter401(resp.StatusCode) {
			break
		}
		// The server restarted with a new token, and the file has it now.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return c.readAPIError(op, resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		return nil
	}
	lr := &io.LimitedReader{R: resp.Body, N: maxJSONBody}
	dec := json.NewDecoder(lr)
	if err := dec.Decode(out); err != nil {
		if lr.N <= 0 {
			// Not a broken connection: the answer is larger than the
			// client reads. Asking again gets the same answer.
			return fmt.Errorf("agent server: %s: answer larger than %d bytes", op, maxJSONBody)
		}
		if ctx.Err() == nil && (rctx.Err() != nil || errors.Is(err, io.ErrUnexpectedEOF) || IsTransient(err)) {
			// The connection broke while reading the answer.
			return markTransient(fmt.Errorf("agent server: %s: read answer: %w", op, err))
		}
		return fmt.Errorf("agent server: %s: decode answer: %w", op, err)
	}
	return nil
}

var errRequestTimeout = errors.New("request timed out")

// transportError wraps a failure to get any answer. Connection failures are
// marked transient; the caller's own cancellation is not.
func (c *Client) transportError(op string, ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("agent server: %s: %w", op, context.Cause(ctx))
	}
	if IsTransient(err) {
		return markTransient(fmt.Errorf("agent server: %s: %w", op, err))
	}
	return fmt.Errorf("agent server: %s: %w", op, err)
}

// tokens are the credentials scrubbed from error texts: the token and the
// one it replaced (a request may have gone out with that one).
func (c *Client) tokens() []string {
	out := make([]string, 0, 2)
	for _, p := range []*string{c.token.Load(), c.prevToken.Load()} {
		if p != nil && *p != "" {
			out = append(out, *p)
		}
	}
	return out
}

// scrubErr is err with the client's tokens and any "Bearer <credential>"
// scrubbed from its text.
func (c *Client) scrubErr(err error) error { return scrubError(err, c.tokens()...) }

// readAPIError turns a non-2xx answer into an *APIError, from the JSON body
// when it has one, else from the status text. The server's texts are
// scrubbed of credentials (a server or proxy may echo the Authorization
// header) and capped.
func (c *Client) readAPIError(op string, resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	ae := &APIError{Op: op, StatusCode: resp.StatusCode}
	var body struct {
		Error     string `json:"error"`
		Code      string `json:"code"`
		RequestID string `json:"request_id"`
	}
	if json.Unmarshal(b, &body) == nil {
		ae.Message, ae.Code, ae.RequestID = body.Error, body.Code, body.RequestID
	}
	if ae.Message == "" {
		ae.Message = http.StatusText(resp.StatusCode)
		if ae.Message == "" {
			ae.Message = "unexpected status"
		}
	}
	if ae.Code == "" {
		ae.Code = "http_" + strconv.Itoa(resp.StatusCode)
	}
	toks := c.tokens()
	ae.Message = capText(scrubSecrets(ae.Message, toks...), MaxErrorMessageBytes)
	ae.Code = capText(scrubSecrets(ae.Code, toks...), maxErrorFieldBytes)
	ae.RequestID = capText(scrubSecrets(ae.RequestID, toks...), maxErrorFieldBytes)
	return ae
}
