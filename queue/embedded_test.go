package queue_test

import (
	"log/slog"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
)

func TestStartEmbedded(t *testing.T) {
	t.Parallel()
	var logs testsupport.SyncBuffer
	s, err := queue.StartEmbedded(queue.EmbeddedOptions{
		Dir:        t.TempDir(),
		Port:       -1,
		ServerName: "jp-test",
		Logger:     slog.New(slog.NewTextHandler(&logs, nil)),
	})
	require.NoError(t, err)
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	assert.Contains(t, s.ClientURL(), "127.0.0.1")
	assert.Equal(t, "jp-test", s.Name())

	nc, err := nats.Connect(s.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := testCtx(t)
	require.NoError(t, queue.Setup(ctx, js, queue.Config{}))
	assert.Contains(t, logs.String(), "nats-server")
}

func TestStartEmbeddedBadOptions(t *testing.T) {
	t.Parallel()
	_, err := queue.StartEmbedded(queue.EmbeddedOptions{})
	require.ErrorContains(t, err, "Dir) is required")
	_, err = queue.StartEmbedded(queue.EmbeddedOptions{Dir: t.TempDir(), Port: 70000})
	require.ErrorContains(t, err, "port must be")
}
