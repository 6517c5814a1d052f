package faults

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
)

// natsServer is one real nats-server process with a file store; it can be
// SIGKILLed and started again on the same port and store.
type natsServer struct {
	name     string
	port     int
	conf     string // config file path
	dir      string
	p        *testsupport.Proc
	starts   int
	clientTL string // "tls://" when the server speaks TLS
}

// natsConfig is what a test server config needs beyond the basics.
type natsConfig struct {
	name string
	// cluster: route port of this server and every route of the cluster.
	clusterPort int
	routes      []int
	// extra config text (authorization, tls blocks).
	extra string
}

// newNatsServer writes the config of a server and starts it.
func newNatsServer(t *testing.T, c natsConfig) *natsServer {
	t.Helper()
	if c.name == "" {
		c.name = "n1"
	}
	dir := t.TempDir()
	s := &natsServer{name: c.name, port: testsupport.FreePort(t), dir: dir, conf: filepath.Join(dir, "nats.conf")}
	var b strings.Builder
	fmt.Fprintf(&b, "server_name: %s\nlisten: 127.0.0.1:%d\n", c.name, s.port)
	fmt.Fprintf(&b, "jetstream { store_dir: %q }\n", filepath.Join(dir, "js"))
	if c.clusterPort != 0 {
		var routes []string
		for _, r := range c.routes {
			routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", r))
		}
		fmt.Fprintf(&b, "cluster { name: faults, listen: 127.0.0.1:%d, routes: [%s] }\n", c.clusterPort, strings.Join(routes, ", "))
	}
	b.WriteString(c.extra)
	require.NoError(t, os.WriteFile(s.conf, []byte(b.String()), 0o600))
	s.start(t)
	return s
}

// start (re)starts the process on the same port and store and waits until
// it takes connections.
func (s *natsServer) start(t *testing.T) {
	t.Helper()
	s.starts++
	s.p = testsupport.StartProc(t, fmt.Sprintf("nats-server %s (start %d)", s.name, s.starts), nil, natsBin, "-c", s.conf)
	require.Eventually(t, func() bool {
		return strings.Contains(s.p.Output(), "Server is ready") || !s.p.Running()
	}, waitFor, 20*time.Millisecond, "nats-server %s ready", s.name)
	require.True(t, s.p.Running(), "nats-server %s exited:\n%s", s.name, s.p.Output())
}

// kill SIGKILLs the server.
func (s *natsServer) kill(t *testing.T) { s.p.Kill(t) }

// URL is the client URL.
func (s *natsServer) URL() string {
	scheme := "nats://"
	if s.clientTL != "" {
		scheme = s.clientTL
	}
	return fmt.Sprintf("%s127.0.0.1:%d", scheme, s.port)
}

// connect opens a test client connection that reconnects forever, like a
// worker's, so it rides out the faults the test injects.
func connect(t *testing.T, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts = append([]nats.Option{
		nats.Name("faults test " + t.Name()),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(100 * time.Millisecond),
		nats.RetryOnFailedConnect(false),
	}, opts...)
	nc, err := nats.Connect(url, opts...)
	require.NoError(t, err, "connect to %s", url)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return nc, js
}
