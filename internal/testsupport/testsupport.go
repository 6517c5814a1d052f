package testsupport

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// Context is a context bounded by d and cancelled at cleanup, so a hung
// call fails its test instead of hanging the suite.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// SyncBuffer is a bytes.Buffer that is safe for concurrent Write and
// String, for capturing logs written from other goroutines.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// LogWriter writes each Write to t's log as one line (a trailing newline
// dropped). t.Log is safe from any goroutine.
func LogWriter(t testing.TB) io.Writer { return logWriter{t} }

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Logger keeps logs out of the test output unless the test runs with -v:
// then they go to t's log as text, from level up.
func Logger(t testing.TB, level slog.Level) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(LogWriter(t), &slog.HandlerOptions{Level: level}))
	}
	return slog.New(slog.DiscardHandler)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testsupport: listen on 127.0.0.1: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// LocalServer serves h on 127.0.0.1 and a random port (httptest.NewServer
// may pick another loopback address); cleanup closes it. before, when not
// nil, runs first at cleanup: a handler that holds streams open closes them
// there, so Close does not wait on them.
func LocalServer(t testing.TB, h http.Handler, before func()) *httptest.Server {
	t.Helper()
	ts := httptest.NewUnstartedServer(h)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		if before != nil {
			before()
		}
		t.Fatalf("testsupport: listen on 127.0.0.1: %v", err)
	}
	_ = ts.Listener.Close()
	ts.Listener = ln
	ts.Start()
	t.Cleanup(func() {
		if before != nil {
			before()
		}
		ts.Close()
	})
	return ts
}
