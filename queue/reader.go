package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// readSpec says what readStream reads.
type readSpec struct {
	stream  string
	subject string // filter; may be a wildcard
	// startSeq is the first stream sequence to read; 0 reads from the start.
	startSeq uint64
	// follow keeps reading new messages until ctx is done or fn stops;
	// otherwise readStream returns once it has caught up.
	follow bool
}

// errStopRead is returned by a read callback to end the read without error.
var errStopRead = errors.New("stop reading")

// idleCheck is how long a non-follow read waits for the next message before
// asking the server whether anything is left (messages that expired while
// being read would otherwise leave it waiting).
const idleCheck = 2 * time.Second

// readStream is the one reader behind WaitResult, WaitNext, Results,
// Approvals, Events and DeadLetters: readRaw, decoding each message as T and
// handing it to fn with its stream sequence. An error from fn ends the read
// and is returned as is (errStopRead ends it with nil).
func readStream[T any](ctx context.Context, js jetstream.JetStream, spec readSpec, fn func(T, uint64) error) error {
	return readRaw(ctx, js, spec, func(msg jetstream.Msg, seq uint64) error {
		var v T
		if err := json.Unmarshal(msg.Data(), &v); err != nil {
			return fmt.Errorf("read %s: decode message %d on %s: %w", spec.subject, seq, msg.Subject(), err)
		}
		return fn(v, seq)
	})
}

// readRaw reads spec.subject with an ordered (ephemeral, flow-controlled,
// self-healing) consumer and hands each message to fn with its stream
// sequence. An error from fn ends the read and is returned as is
// (errStopRead ends it with nil).
func readRaw(ctx context.Context, js jetstream.JetStream, spec readSpec, fn func(jetstream.Msg, uint64) error) error {
	occ := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{spec.subject},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	if spec.startSeq > 1 {
		occ.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		occ.OptStartSeq = spec.startSeq
	}
	// Without follow, read what is stored now and not what arrives while
	// reading, so a busy stream cannot keep the read going forever.
	var lastSeq uint64
	if !spec.follow {
		st, err := js.Stream(ctx, spec.stream)
		if err != nil {
			return fmt.Errorf("read %s: stream %s: %w", spec.subject, spec.stream, err)
		}
		lastSeq = st.CachedInfo().State.LastSeq
		if lastSeq == 0 || lastSeq < spec.startSeq {
			return nil
		}
	}
	cons, err := js.OrderedConsumer(ctx, spec.stream, occ)
	if err != nil {
		return fmt.Errorf("read %s from stream %s: %w", spec.subject, spec.stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("read %s from stream %s: %w", spec.subject, spec.stream, err)
	}
	defer it.Stop()

	if !spec.follow {
		// The consumer now exists; its info at creation says whether there
		// is anything to read at all.
		if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
			return nil
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("read %s: %w", spec.subject, err)
		}
		nextCtx, cancel := ctx, context.CancelFunc(func() {})
		if !spec.follow {
			nextCtx, cancel = context.WithTimeout(ctx, idleCheck)
		}
		msg, err := it.Next(jetstream.NextContext(nextCtx))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("read %s: %w", spec.subject, ctx.Err())
			}
			if !spec.follow && errors.Is(err, context.DeadlineExceeded) {
				// Idle: done if the server has nothing left for us.
				info, ierr := cons.Info(ctx)
				if ierr != nil {
					return fmt.Errorf("read %s: check for pending messages: %w", spec.subject, ierr)
				}
				if info.NumPending == 0 {
					return nil
				}
				continue
			}
			return fmt.Errorf("read %s from stream %s: %w", spec.subject, spec.stream, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("read %s: message metadata: %w", spec.subject, err)
		}
		if !spec.follow && meta.Sequence.Stream > lastSeq {
			return nil
		}
		if err := fn(msg, meta.Sequence.Stream); err != nil {
			if errors.Is(err, errStopRead) {
				return nil
			}
			return err
		}
		if !spec.follow && (meta.NumPending == 0 || meta.Sequence.Stream >= lastSeq) {
			return nil
		}
	}
}
