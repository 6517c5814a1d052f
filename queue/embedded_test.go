package queue_test

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

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

func TestStartEmbeddedSync(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mode     queue.SyncMode
		always   bool
		interval time.Duration
	}{
		{queue.SyncMode{}, true, 2 * time.Minute}, // the zero value: always
		{queue.SyncAlways, true, 2 * time.Minute},
		{queue.SyncLazy, false, 2 * time.Minute},
		{queue.SyncEvery(5 * time.Second), false, 5 * time.Second},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			t.Parallel()
			s, err := queue.StartEmbedded(queue.EmbeddedOptions{Dir: t.TempDir(), Port: -1, Sync: tc.mode})
			require.NoError(t, err)
			t.Cleanup(func() {
				s.Shutdown()
				s.WaitForShutdown()
			})
			jsc := s.JetStreamConfig()
			require.NotNil(t, jsc)
			assert.Equal(t, tc.always, jsc.SyncAlways)
			assert.Equal(t, tc.interval, jsc.SyncInterval)
		})
	}
}

func TestParseSyncMode(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]queue.SyncMode{
		"always": queue.SyncAlways, "ALWAYS": queue.SyncAlways, "": queue.SyncAlways,
		"default": queue.SyncLazy, "lazy": queue.SyncLazy,
		"10s": queue.SyncEvery(10 * time.Second),
	} {
		got, err := queue.ParseSyncMode(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
		again, err := queue.ParseSyncMode(got.String())
		require.NoError(t, err, in)
		assert.Equal(t, got, again, "String round-trips (%q)", in)
	}
	for _, in := range []string{"sometimes", "0s", "-1m"} {
		_, err := queue.ParseSyncMode(in)
		require.ErrorContains(t, err, "want always, default or a positive duration", in)
	}
}

// BenchmarkPublishSync measures what fsyncing every write costs: jobs
// published one at a time (each waits for its ack, as `jetpilot submit`
// does) and in async batches of 256 (as a busy producer does) against an
// embedded server on loopback, with sync always and with nats-server's
// default lazy sync. BENCHMARKS.md has the figures:
//
//	go test ./queue -run '^$' -bench PublishSync -benchtime 2000x
func BenchmarkPublishSync(b *testing.B) {
	for _, mode := range []queue.SyncMode{queue.SyncAlways, queue.SyncLazy} {
		for _, batch := range []int{1, 256} {
			b.Run(fmt.Sprintf("sync=%s/batch=%d", mode, batch), func(b *testing.B) {
				benchPublish(b, mode, batch)
			})
		}
	}
}

func benchPublish(b *testing.B, mode queue.SyncMode, batch int) {
	s, err := queue.StartEmbedded(queue.EmbeddedOptions{Dir: b.TempDir(), Port: -1, Sync: mode})
	require.NoError(b, err)
	b.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	nc, err := nats.Connect(s.ClientURL())
	require.NoError(b, err)
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(batch))
	require.NoError(b, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	b.Cleanup(cancel)
	cfg := queue.Config{}.WithDefaults()
	require.NoError(b, queue.Setup(ctx, js, cfg))
	subject := cfg.JobSubject("default")
	body := []byte(`{"id":"bench","prompt":"` + strings.Repeat("x", 200) + `"}`)

	b.SetBytes(int64(len(body)))
	b.Cleanup(func() { b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "jobs/s") })
	b.ResetTimer()
	if batch == 1 {
		for i := range b.N {
			_, err := js.Publish(ctx, subject, body, jetstream.WithMsgID(strconv.Itoa(i)))
			require.NoError(b, err)
		}
		return
	}
	for start := 0; start < b.N; start += batch {
		futures := make([]jetstream.PubAckFuture, 0, batch)
		for i := start; i < min(start+batch, b.N); i++ {
			f, err := js.PublishAsync(subject, body, jetstream.WithMsgID(strconv.Itoa(i)))
			require.NoError(b, err)
			futures = append(futures, f)
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				require.NoError(b, err)
			case <-ctx.Done():
				b.Fatalf("publish acks: %v", ctx.Err())
			}
		}
	}
}
