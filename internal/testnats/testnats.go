package testnats

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// readyTimeout bounds server start-up and connection drain in tests.
const readyTimeout = 10 * time.Second

// Start runs an embedded JetStream server on 127.0.0.1 and a random port,
// storing under t.TempDir, connects to it, and registers cleanup that
// drains the connection and shuts the server down.
func Start(t testing.TB) (*server.Server, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	s := StartServer(t, t.TempDir())
	nc, js := Connect(t, s)
	return s, nc, js
}

// StartServer runs an embedded JetStream server storing in dir, so a test
// can shut it down and start another on the same dir to test a restart.
// Cleanup shuts it down (again, harmlessly, if the test already did).
func StartServer(t testing.TB, dir string) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      server.RANDOM_PORT,
		JetStream: true,
		StoreDir:  dir,
		NoSigs:    true,
		NoLog:     true,
		// Lazy fsync, nats-server's default, set explicitly: tests do not
		// survive power failures, and fsyncing every write would slow the
		// suite (and CI) by an order of magnitude. `jetpilot dev` syncs
		// every write (queue.SyncAlways).
		SyncAlways:   false,
		SyncInterval: 2 * time.Minute,
	})
	if err != nil {
		t.Fatalf("testnats: new server: %v", err)
	}
	s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	if !s.ReadyForConnections(readyTimeout) {
		t.Fatalf("testnats: server not ready after %s", readyTimeout)
	}
	if !s.JetStreamEnabled() {
		t.Fatalf("testnats: JetStream did not start (store %s)", dir)
	}
	return s
}

// Connect opens a connection and a JetStream handle to s; cleanup drains
// the connection and waits (bounded) until it is closed. Cleanups run in
// reverse order, so the connection closes before its server shuts down.
func Connect(t testing.TB, s *server.Server) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	closed := make(chan struct{})
	nc, err := nats.Connect(URL(s),
		nats.Name(fmt.Sprintf("testnats %s", t.Name())),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }),
	)
	if err != nil {
		t.Fatalf("testnats: connect: %v", err)
	}
	t.Cleanup(func() {
		if err := nc.Drain(); err != nil {
			nc.Close()
		}
		select {
		case <-closed:
		case <-time.After(readyTimeout):
			nc.Close()
		}
	})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("testnats: jetstream: %v", err)
	}
	return nc, js
}

// URL is the client URL of s, for example "nats://127.0.0.1:38211".
func URL(s *server.Server) string { return s.ClientURL() }
