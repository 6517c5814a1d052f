package testsupport_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
)

func TestSyncBuffer(t *testing.T) {
	t.Parallel()
	var b testsupport.SyncBuffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		fmt.Fprint(&b, "from a goroutine;")
	}()
	fmt.Fprint(&b, "from the test;")
	<-done
	assert.Len(t, b.String(), len("from a goroutine;from the test;"))
}

func TestLocalServer(t *testing.T) {
	t.Parallel()
	closed := false
	// Cleanups run last first: this one runs after the server's.
	t.Cleanup(func() { assert.True(t, closed, "before ran at cleanup") })
	ts := testsupport.LocalServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "hi")
	}), func() { closed = true })
	assert.Regexp(t, `^http://127\.0\.0\.1:\d+$`, ts.URL)
	resp, err := ts.Client().Get(ts.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, "hi", string(b))
	assert.Positive(t, testsupport.FreePort(t))
}

func TestReadStream(t *testing.T) {
	t.Parallel()
	_, _, js := testnats.Start(t)
	ctx := testsupport.Context(t, 20*time.Second)
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}})
	require.NoError(t, err)
	msgs, err := testsupport.ReadStream(ctx, js, "T", "")
	require.NoError(t, err)
	assert.Empty(t, msgs)
	for i := range 5 {
		_, err := js.Publish(ctx, fmt.Sprintf("t.%d", i%2), fmt.Appendf(nil, `{"n":%d}`, i))
		require.NoError(t, err)
	}
	msgs, err = testsupport.ReadStream(ctx, js, "T", "")
	require.NoError(t, err)
	assert.Len(t, msgs, 5)
	msgs, err = testsupport.ReadStream(ctx, js, "T", "t.1")
	require.NoError(t, err)
	type n struct{ N int }
	got, err := testsupport.DecodeJSON[n](msgs)
	require.NoError(t, err)
	assert.Equal(t, []n{{1}, {3}}, got)
	msgs, err = testsupport.ReadStream(ctx, js, "T", "t.none")
	require.NoError(t, err)
	assert.Empty(t, msgs)
	assert.Equal(t, 5, testsupport.StreamLen(ctx, js, "T"))
	assert.Equal(t, -1, testsupport.StreamLen(ctx, js, "NOPE"))
	_, err = testsupport.ReadStream(context.Background(), js, "NOPE", "")
	assert.Error(t, err)
}

func TestProc(t *testing.T) {
	t.Parallel()
	p := testsupport.StartProc(t, "sh", []string{"X=from-env"}, "/bin/sh", "-c", `echo "$X"; echo err >&2; exit 3`)
	assert.Equal(t, 3, p.ExitCode(t, 30*time.Second))
	assert.False(t, p.Running())
	assert.Contains(t, p.Output(), "from-env\n")
	assert.Contains(t, p.Output(), "err\n")

	long := testsupport.StartProc(t, "sleeper", nil, "/bin/sh", "-c", "exec sleep 60")
	assert.True(t, long.Running())
	long.Kill(t)
	select {
	case <-long.Done():
	default:
		t.Fatal("Kill returned before the process exited")
	}
}
