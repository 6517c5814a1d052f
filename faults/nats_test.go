package faults

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// natsServer is one real nats-server process with a file store; it can be
// SIGKILLed and started again on the same port and store.
type natsServer struct {
	name     string
	port     int
	conf     string // config file path
	dir      string
	p        *proc
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
	s := &natsServer{name: c.name, port: freePort(t), dir: dir, conf: filepath.Join(dir, "nats.conf")}
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
	s.p = startProc(t, fmt.Sprintf("nats-server %s (start %d)", s.name, s.starts), nil, natsBin, "-c", s.conf)
	require.Eventually(t, func() bool {
		return strings.Contains(s.p.Output(), "Server is ready") || !s.p.running()
	}, waitFor, 20*time.Millisecond, "nats-server %s ready", s.name)
	require.True(t, s.p.running(), "nats-server %s exited:\n%s", s.name, s.p.Output())
}

// kill SIGKILLs the server.
func (s *natsServer) kill(t *testing.T) { s.p.kill(t) }

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

// readStream returns every message stored in stream on subjects matching
// filter ("" = all), read with an ordered consumer.
func readStream(ctx context.Context, js jetstream.JetStream, stream, filter string) ([]jetstream.Msg, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("look up stream %s: %w", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s info: %w", stream, err)
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	cfg := jetstream.OrderedConsumerConfig{}
	if filter != "" {
		cfg.FilterSubjects = []string{filter}
	}
	c, err := s.OrderedConsumer(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("ordered consumer on %s: %w", stream, err)
	}
	var out []jetstream.Msg
	// Bounded: each round takes at least one message or ends.
	for range info.State.Msgs + 1 {
		batch, err := c.Fetch(1000, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return nil, fmt.Errorf("read stream %s: %w", stream, err)
		}
		got := 0
		last := false
		for m := range batch.Messages() {
			got++
			out = append(out, m)
			if md, err := m.Metadata(); err == nil && md.NumPending == 0 {
				last = true
			}
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("read stream %s: %w", stream, err)
		}
		if last || got == 0 {
			break
		}
	}
	return out, nil
}

// streamMsgs is how many messages stream holds, or -1 while it cannot say
// (a leader election, a reconnect).
func streamMsgs(ctx context.Context, js jetstream.JetStream, stream string) int {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return -1
	}
	info, err := s.Info(ctx)
	if err != nil {
		return -1
	}
	return int(info.State.Msgs)
}
