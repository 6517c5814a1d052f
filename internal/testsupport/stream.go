package testsupport

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ReadStream returns every message stored in stream on subjects matching
// filter ("" = all; wildcards allowed), in order, as of the call: read with
// an ordered consumer, bounded by what the stream held when asked. It
// returns an error rather than failing a test, so it is safe in an
// Eventually condition.
func ReadStream(ctx context.Context, js jetstream.JetStream, stream, filter string) ([]jetstream.Msg, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("look up stream %s: %w", stream, err)
	}
	var opts []jetstream.StreamInfoOpt
	if filter != "" {
		opts = append(opts, jetstream.WithSubjectFilter(filter))
	}
	info, err := s.Info(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("stream %s info: %w", stream, err)
	}
	want := info.State.Msgs
	if filter != "" {
		want = 0
		for _, n := range info.State.Subjects {
			want += n
		}
	}
	if want == 0 {
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
	out := make([]jetstream.Msg, 0, want)
	// Bounded: each round takes at least one message or ends.
	for range want + 1 {
		batch, err := c.Fetch(int(min(want-uint64(len(out)), 1000)), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return nil, fmt.Errorf("read stream %s: %w", stream, err)
		}
		got, last := 0, false
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
		if last || got == 0 || uint64(len(out)) >= want {
			break
		}
	}
	return out, nil
}

// StreamLen is how many messages stream holds, or -1 while it cannot say
// (a leader election, a reconnect).
func StreamLen(ctx context.Context, js jetstream.JetStream, stream string) int {
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

// DecodeJSON decodes the data of every message as a T.
func DecodeJSON[T any](msgs []jetstream.Msg) ([]T, error) {
	var out []T
	for _, m := range msgs {
		var v T
		if err := json.Unmarshal(m.Data(), &v); err != nil {
			return nil, fmt.Errorf("decode %s message: %w", m.Subject(), err)
		}
		out = append(out, v)
	}
	return out, nil
}
