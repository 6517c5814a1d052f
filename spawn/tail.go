package spawn

import "unicode/utf8"

// tailText keeps the last max bytes of a text written to it, and counts
// the bytes it dropped: a run's memory stays bounded however much text the
// agent server sends (the session's messages keep the whole text).
type tailText struct {
	max     int
	buf     []byte
	dropped int64
}

func newTailText(max int) *tailText { return &tailText{max: max} }

// WriteString appends s, dropping the oldest bytes past max. Amortised: the
// buffer is compacted only when it holds twice max.
func (t *tailText) WriteString(s string) {
	if len(s) >= t.max {
		t.dropped += int64(len(t.buf) + len(s) - t.max)
		t.buf = append(t.buf[:0], s[len(s)-t.max:]...)
		return
	}
	t.buf = append(t.buf, s...)
	if len(t.buf) > 2*t.max {
		over := len(t.buf) - t.max
		t.dropped += int64(over)
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
}

// String is the text kept: at most max bytes, starting on a UTF-8 boundary.
func (t *tailText) String() string {
	b := t.buf
	if over := len(b) - t.max; over > 0 {
		b = b[over:]
	}
	i := 0
	if t.dropped > 0 || len(t.buf) > t.max {
		for i < len(b) && i < utf8.UTFMax && !utf8.RuneStart(b[i]) {
			i++
		}
	}
	return string(b[i:])
}

// Dropped is how many bytes of the text are no longer kept.
func (t *tailText) Dropped() int64 {
	d := t.dropped
	if over := len(t.buf) - t.max; over > 0 {
		d += int64(over)
	}
	return d
}

// Total is how many bytes were written.
func (t *tailText) Total() int64 { return t.dropped + int64(len(t.buf)) }
