package testnats_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
)

func TestStart(t *testing.T) {
	t.Parallel()
	s, nc, js := testnats.Start(t)
	assert.Regexp(t, `^nats://127\.0\.0\.1:\d+$`, testnats.URL(s))
	assert.True(t, nc.IsConnected())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}})
	require.NoError(t, err)
}

func TestRestartKeepsData(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	s1 := testnats.StartServer(t, dir)
	nc1, js1 := testnats.Connect(t, s1)
	_, err := js1.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}})
	require.NoError(t, err)
	_, err = js1.Publish(ctx, "t.x", []byte("kept"))
	require.NoError(t, err)
	nc1.Close()
	s1.Shutdown()
	s1.WaitForShutdown()

	s2 := testnats.StartServer(t, dir)
	_, js2 := testnats.Connect(t, s2)
	st, err := js2.Stream(ctx, "T")
	require.NoError(t, err)
	msg, err := st.GetMsg(ctx, 1)
	require.NoError(t, err)
	assert.Equal(t, "kept", string(msg.Data))
}
