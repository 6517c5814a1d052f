package agentsim

import (
	"bytes"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// handleEvents serves GET /v1/sessions/{id}/events. Any UUID gets a
// stream, whether the session exists or not (the real event log makes a
// ring for any id): keep-alives only, until something is published.
// Without Last-Event-ID only events published after the subscription are
// sent (the trap a late subscriber falls into); with it, newer events still
// in the ring are replayed first, or a gap_detected frame is sent when they
// are gone, and live events follow either way.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	id, pe := pathUUID(r, "id")
	if pe != nil {
		writePlain(w, pe)
		return
	}
	lastID, hasLast := parseLastEventID(r.Header.Get("Last-Event-ID"))
	sub := &subscriber{notify: make(chan struct{}, 1), lag: s.opts.SubscriberLag}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		writeError(w, errf(http.StatusServiceUnavailable, codeUnavailable, "server is shutting down"))
		return
	}
	s.wg.Add(1) // under s.mu with closed false: Close is not waiting yet
	l := s.logForLocked(id)
	life := s.life
	sess := s.sessions[id]
	if sess == nil {
		// Connection faults are per session; a stream for an unknown id
		// gets a stand-in that has none.
		sess = &session{id: id}
	}
	var gap map[string]any
	var replay []*event
	if hasLast && len(l.ring) > 0 {
		oldest, newest := l.ring[0].id, l.lastID
		if lastID+1 < oldest {
			gap = map[string]any{
				"requested_after_id":  lastID,
				"oldest_available_id": oldest,
				"newest_available_id": newest,
				"resume_hint":         "refresh_snapshot_then_resume",
			}
		} else {
			for _, ev := range l.ring {
				if ev.id > lastID {
					replay = append(replay, ev)
				}
			}
		}
	}
	l.subs[sub] = struct{}{}
	s.mu.Unlock()

	c := &sseConn{s: s, sess: sess, log: l, life: life, sub: sub, w: w, rc: http.NewResponseController(w), r: r}
	defer s.wg.Done()
	defer c.unsubscribe()
	c.serve(gap, replay)
}

func parseLastEventID(v string) (uint64, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, false // like the real server: an unparsable id is no id
	}
	return n, true
}

// sseConn is one open event stream.
type sseConn struct {
	s    *Server
	sess *session
	log  *eventLog
	life *lifetime // a Restart ends it: the stream is cut
	sub  *subscriber
	w    http.ResponseWriter
	rc   *http.ResponseController
	r    *http.Request

	// Connection faults this stream has claimed from the session.
	dropClaimed, stallClaimed bool
	dropAfter, stallAfter     int
	frames                    int // event frames written since the first claim
}

func (c *sseConn) unsubscribe() {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	delete(c.log.subs, c.sub)
	c.sub.queue = nil
}

func (c *sseConn) serve(gap map[string]any, replay []*event) {
	h := c.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	c.w.WriteHeader(http.StatusOK)
	if c.rc.Flush() != nil {
		return
	}
	if gap != nil {
		data, err := marshal(gap)
		if err != nil || c.write([]byte("event: gap_detected\ndata: "+string(data)+"\n\n")) != nil {
			return
		}
	}
	for _, ev := range replay {
		if !c.writeEvent(ev) {
			return
		}
	}
	// The keep-alive timer restarts on every event, as axum's does.
	ka := time.NewTimer(c.s.opts.KeepAlive)
	defer ka.Stop()
	for {
		select {
		case <-c.r.Context().Done():
			return
		case <-c.s.ctx.Done():
			return
		case <-c.life.ctx.Done():
			// The server restarted: its connections died with it.
			cutConn(c.w)
			return
		case <-ka.C:
			if c.write([]byte(": keepalive\n\n")) != nil {
				return
			}
			ka.Reset(c.s.opts.KeepAlive)
		case <-c.sub.notify:
			for {
				// A few events at a time: the rest stay queued, where a
				// lagging stream loses its oldest.
				c.s.mu.Lock()
				n := min(len(c.sub.queue), 64)
				batch := slices.Clone(c.sub.queue[:n])
				clear(c.sub.queue[:n])
				c.sub.queue = c.sub.queue[n:]
				c.s.mu.Unlock()
				if n == 0 {
					break
				}
				for _, ev := range batch {
					if !c.writeEvent(ev) {
						return
					}
				}
				if !ka.Stop() {
					select {
					case <-ka.C:
					default:
					}
				}
				ka.Reset(c.s.opts.KeepAlive)
			}
		}
	}
}

// write writes b and flushes it.
func (c *sseConn) write(b []byte) error {
	if _, err := c.w.Write(b); err != nil {
		return err
	}
	return c.rc.Flush()
}

// writeEvent writes one event frame; false means the stream is over (write
// failed, or a "#sim drop-after"/"stall-after" fault ended it).
func (c *sseConn) writeEvent(ev *event) bool {
	if c.fault() {
		return false
	}
	frame := frameBytes(ev)
	for _, piece := range pieces(ev, frame) {
		if c.write(piece) != nil {
			return false
		}
	}
	c.frames++
	return !c.fault()
}

// fault claims the session's pending connection faults and applies them
// when this stream has written enough frames. It reports whether the stream
// was cut or stalled.
func (c *sseConn) fault() bool {
	c.s.mu.Lock()
	if !c.dropClaimed && c.sess.drop.left > 0 {
		c.sess.drop.left--
		c.dropClaimed, c.dropAfter = true, c.sess.drop.after
		c.frames = 0
	}
	if !c.stallClaimed && c.sess.stall.left > 0 {
		c.sess.stall.left--
		c.stallClaimed, c.stallAfter = true, c.sess.stall.after
		if !c.dropClaimed {
			c.frames = 0
		}
	}
	c.s.mu.Unlock()
	switch {
	case c.dropClaimed && c.frames >= c.dropAfter:
		// Cut: TCP closed, no chunked terminator.
		cutConn(c.w)
		return true
	case c.stallClaimed && c.frames >= c.stallAfter:
		// Stall: silent (no events, no keep-alives) until the client gives up.
		c.unsubscribe()
		select {
		case <-c.r.Context().Done():
		case <-c.s.ctx.Done():
		case <-c.life.ctx.Done():
			cutConn(c.w)
		}
		return true
	}
	return false
}

// frameBytes encodes ev as an SSE frame. The wire format varies with the
// event id, deterministically, the ways the SSE spec allows: every 3rd id
// uses CRLF line ends, ids ≡ 3 (mod 7) put no space after the colons, and
// ids ≡ 2 (mod 5) split the JSON data over two data lines (joined by "\n"
// it is the same JSON).
func frameBytes(ev *event) []byte {
	eol, sep := "\n", ": "
	if ev.id%3 == 0 {
		eol = "\r\n"
	}
	if ev.id%7 == 3 {
		sep = ":"
	}
	var b bytes.Buffer
	b.Grow(len(ev.data) + 64)
	b.WriteString("id" + sep + strconv.FormatUint(ev.id, 10) + eol)
	b.WriteString("event" + sep + ev.name + eol)
	if ev.data != nil {
		lines := [][]byte{ev.data}
		if !ev.noSplit && ev.id%5 == 2 {
			// The envelope starts {"id":N, so its first comma is between
			// members: a line break there keeps the JSON valid.
			if i := bytes.IndexByte(ev.data, ','); i > 0 {
				lines = [][]byte{ev.data[:i+1], ev.data[i+1:]}
			}
		}
		for _, l := range lines {
			b.WriteString("data" + sep)
			b.Write(l)
			b.WriteString(eol)
		}
	}
	b.WriteString(eol)
	return b.Bytes()
}

// pieces cuts frames with id ≡ 1 (mod 4) into parts written with flushes
// between them: inside the "id" field, inside the first multi-byte UTF-8
// character, in the middle, and just before the last byte (between the CR
// and LF of a CRLF frame). Other frames go out whole.
func pieces(ev *event, frame []byte) [][]byte {
	if ev.id%4 != 1 || len(frame) < 8 {
		return [][]byte{frame}
	}
	cuts := []int{2, len(frame) / 2, len(frame) - 1}
	for i, b := range frame {
		if b >= 0xC0 { // first byte of a multi-byte character
			cuts = append(cuts, i+1)
			break
		}
	}
	// Sort the few cut points (insertion sort) and drop duplicates.
	for i := 1; i < len(cuts); i++ {
		for j := i; j > 0 && cuts[j] < cuts[j-1]; j-- {
			cuts[j], cuts[j-1] = cuts[j-1], cuts[j]
		}
	}
	var out [][]byte
	prev := 0
	for _, cut := range cuts {
		if cut <= prev || cut >= len(frame) {
			continue
		}
		out = append(out, frame[prev:cut])
		prev = cut
	}
	return append(out, frame[prev:])
}
