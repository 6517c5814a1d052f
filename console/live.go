package console

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/queue"
)

// keepAlive is how often an idle stream sends a comment, so proxies and
// the browser keep it open.
const keepAlive = 25 * time.Second

// sse is one open event stream.
type sse struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func startSSE(w http.ResponseWriter) (*sse, error) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	s := &sse{w: w, rc: http.NewResponseController(w)}
	return s, s.rc.Flush()
}

// send writes one event; data must be one line (compact JSON).
func (s *sse) send(event, id string, data []byte) error {
	var b bytes.Buffer
	if id != "" {
		fmt.Fprintf(&b, "id: %s\n", id)
	}
	fmt.Fprintf(&b, "event: %s\ndata: %s\n\n", event, data)
	if _, err := s.w.Write(b.Bytes()); err != nil {
		return err
	}
	return s.rc.Flush()
}

func (s *sse) comment() error {
	if _, err := s.w.Write([]byte(": keepalive\n\n")); err != nil {
		return err
	}
	return s.rc.Flush()
}

// live streams "changed" whenever what a list page shows may have changed
// (coalesced to one every quarter second); the page then fetches its main
// part again. It ends with the request.
func (s *Server) live(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	changes, unsubscribe := s.jobs.Subscribe()
	defer unsubscribe()
	extra := make(chan struct{}, 1)
	poke := func() {
		select {
		case extra <- struct{}{}:
		default:
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	switch r.URL.Query().Get("page") {
	case "dead":
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The newest dead letter first (a refresh that covers what died
			// since the page was rendered), then each new one.
			_ = follow(ctx, s.js, s.qcfg.DeadStream(), s.qcfg.DeadWildcard(), jetstream.DeliverLastPolicy, 0, func(jetstream.Msg) { poke() })
		}()
	case "policy":
		pw, err := s.policies.Watch(ctx, func(*policy.Policy, error) { poke() })
		if err == nil {
			defer pw.Stop()
		}
	}
	out, err := startSSE(w)
	if err != nil {
		return
	}
	// What changed between the page's rendering and the subscription
	// above is covered by one refresh now.
	poke()
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if out.comment() != nil {
				return
			}
			continue
		case <-changes:
		case <-extra:
		}
		// Coalesce a burst into one refresh.
		t := time.NewTimer(coalesce)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		select {
		case <-changes:
		default:
		}
		if out.send("changed", "", []byte("{}")) != nil {
			return
		}
	}
}

// follow reads subject in stream with an ordered consumer delivering as
// policy says (from stream sequence start for DeliverByStartSequencePolicy),
// handing each message to fn until ctx is done.
func follow(ctx context.Context, js jetstream.JetStream, stream, subject string, policy jetstream.DeliverPolicy, start uint64, fn func(jetstream.Msg)) error {
	occ := jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}, DeliverPolicy: policy}
	if policy == jetstream.DeliverByStartSequencePolicy {
		if start <= 1 {
			occ.DeliverPolicy = jetstream.DeliverAllPolicy
		} else {
			occ.OptStartSeq = start
		}
	}
	cons, err := js.OrderedConsumer(ctx, stream, occ)
	if err != nil {
		return fmt.Errorf("follow %s: %w", subject, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("follow %s: %w", subject, err)
	}
	defer it.Stop()
	for {
		m, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("follow %s: %w", subject, err)
		}
		fn(m)
	}
}

// liveMsg is one message for a job page's stream.
type liveMsg struct {
	event string
	id    string
	data  []byte
}

// jobLive streams a job's events as they happen ("ev", one JSON event
// each, id its stream sequence so a reconnect resumes after it), and
// "changed" when its result, approvals or run record change. It ends with
// the request.
func (s *Server) jobLive(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	key, err := queue.RunKey(id)
	if err != nil {
		s.fail(w, http.StatusBadRequest, err.Error())
		return
	}
	var after uint64
	if last := r.Header.Get("Last-Event-ID"); last != "" {
		after, _ = strconv.ParseUint(last, 10, 64)
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	msgs := make(chan liveMsg, 64)
	emit := func(m liveMsg) {
		select {
		case msgs <- m:
		case <-ctx.Done():
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	// Results, approvals and the run record are followed from their
	// latest value, so the first of each is a refresh that covers what
	// changed between the page's rendering and these subscriptions.
	changed := func(jetstream.Msg) { emit(liveMsg{event: "changed", data: []byte("{}")}) }
	wg.Add(3)
	go func() {
		defer wg.Done()
		_ = follow(ctx, s.js, s.qcfg.EventsStream(), s.qcfg.EventSubject(id), jetstream.DeliverByStartSequencePolicy, after+1, func(m jetstream.Msg) {
			var b bytes.Buffer
			if json.Compact(&b, m.Data()) != nil {
				return
			}
			meta, err := m.Metadata()
			if err != nil {
				return
			}
			emit(liveMsg{event: "ev", id: strconv.FormatUint(meta.Sequence.Stream, 10), data: b.Bytes()})
		})
	}()
	go func() {
		defer wg.Done()
		_ = follow(ctx, s.js, s.qcfg.ResultsStream(), s.qcfg.ResultSubject(id), jetstream.DeliverLastPolicy, 0, changed)
	}()
	go func() {
		defer wg.Done()
		_ = follow(ctx, s.js, s.qcfg.ApprovalsStream(), s.qcfg.ApprovalSubject(id), jetstream.DeliverLastPolicy, 0, changed)
	}()
	if kv, err := s.js.KeyValue(ctx, s.qcfg.RunsBucket()); err == nil {
		if kw, err := kv.Watch(ctx, key); err == nil {
			defer func() { _ = kw.Stop() }()
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-ctx.Done():
						return
					case e, ok := <-kw.Updates():
						if !ok {
							return
						}
						if e != nil {
							emit(liveMsg{event: "changed", data: []byte("{}")})
						}
					}
				}
			}()
		}
	}
	out, err := startSSE(w)
	if err != nil {
		return
	}
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if out.comment() != nil {
				return
			}
		case m := <-msgs:
			if out.send(m.event, m.id, m.data) != nil {
				return
			}
		}
	}
}
