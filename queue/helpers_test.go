package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
)

// testCtx is bounded so a hung test fails instead of hanging the suite.
func testCtx(t *testing.T) context.Context { return testsupport.Context(t, 20*time.Second) }

type env struct {
	ctx context.Context
	nc  *nats.Conn
	js  jetstream.JetStream
	cfg queue.Config
}

// setupEnv starts a server and runs Setup with cfg.
func setupEnv(t *testing.T, cfg queue.Config) env {
	t.Helper()
	_, nc, js := testnats.Start(t)
	ctx := testCtx(t)
	require.NoError(t, queue.Setup(ctx, js, cfg))
	return env{ctx: ctx, nc: nc, js: js, cfg: cfg.WithDefaults()}
}
