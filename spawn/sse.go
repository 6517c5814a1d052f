package spawn

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
)

// DefaultMaxFrameBytes caps one SSE frame when no other cap is set.
const DefaultMaxFrameBytes = 8 << 20

// ErrFrameTooLarge is returned (wrapped in *FrameTooLargeError) for a frame
// bigger than the reader's cap. The reader stays usable: the next call to Next
// discards the rest of that frame and goes on with the following one.
var ErrFrameTooLarge = errors.New("sse frame too large")

// FrameTooLargeError tells which frame was dropped, as far as its fields were
// read before the cap was hit.
type FrameTooLargeError struct {
	// ID is the last event id seen, including the dropped frame's own id
	// when its id line came before the data that overflowed.
	ID string
	// Event is the frame's event name when read before the overflow.
	Event string
	// Limit is the cap in bytes.
	Limit int
}

func (e *FrameTooLargeError) Error() string {
	s := fmt.Sprintf("sse frame larger than %d bytes", e.Limit)
	if e.Event != "" {
		s += " (event " + e.Event
		if e.ID != "" {
			s += ", id " + e.ID
		}
		s += ")"
	}
	return s
}

func (e *FrameTooLargeError) Unwrap() error { return ErrFrameTooLarge }

// Frame is one dispatched SSE event.
type Frame struct {
	// ID is the stream's last event id after this frame (the SSE "last event
	// ID buffer"): the frame's own id field, or the previous one.
	ID string
	// HasID reports whether this frame carried an id field itself.
	HasID bool
	// DroppedID is the id of the last frame before this one that was not
	// dispatched because it had no data ("" if none): its id was used, so
	// a reader checking that ids are contiguous must count it.
	DroppedID string
	// Event is the event name; "" means the default "message".
	Event string
	// Data is the frame's data lines joined by "\n".
	Data []byte
}

// SSEOptions configure an SSEReader.
type SSEOptions struct {
	// MaxFrameBytes caps the bytes of one frame (all its lines, field names
	// included). Default DefaultMaxFrameBytes.
	MaxFrameBytes int
	// OnComment, if set, is called for every comment line (":" lines, such
	// as keep-alives) with the text after the colon and one optional space.
	OnComment func(comment string)
}

// SSEReader parses a text/event-stream byte by byte, per the SSE
// specification: LF, CRLF and lone CR end lines, data lines are joined by
// "\n", lines starting with ":" are comments, "field:value" may have one
// leading space before the value, "retry" and unknown fields are ignored, a
// frame without data is not dispatched, and an unterminated frame at the end
// of the stream is dropped. Bytes are only decoded after a frame is complete,
// so chunks may split anything, including a UTF-8 rune.
//
// Memory is bounded by MaxFrameBytes plus a small read buffer. An SSEReader is
// not safe for concurrent use.
type SSEReader struct {
	r         io.Reader
	max       int
	onComment func(string)

	buf      []byte  // read buffer: *bufp while bytes come, nil between bursts
	bufp     *[]byte // from sseBufs
	first    [1]byte // the read that waits for the next burst lands here
	waited   bool    // the last fill was that wait: read on into the buffer
	pos, end int
	eof      bool
	readErr  error
	bomDone  bool
	afterCR  bool // last line ended in CR: skip one LF that follows

	line      []byte // current, unterminated line
	frameSize int    // bytes of the current frame so far
	discard   bool   // dropping the rest of an oversized frame
	data      []byte // the frame's data so far; handed to its Frame, never reused
	hasData   bool
	event     string
	lastID    string
	frameID   bool
	droppedID string // id of the last frame dropped for having no data, since the last dispatch
}

// sseBufSize is the read buffer of an SSEReader. Agent-server frames are a
// few hundred bytes (a text_delta about 300), so one usually fits; longer
// lines are joined across fills, and the body under it is buffered by the
// transport already, so a smaller buffer costs a copy call, not a syscall.
const sseBufSize = 512

// sseBufs holds the read buffers of the readers between bursts. A reader
// waits for the next burst with a one-byte read and no buffer (a worker has
// one reader per run in flight, and an idle run waits for long), and takes
// a buffer only once bytes come: one more read call per burst.
var sseBufs = sync.Pool{New: func() any { b := make([]byte, sseBufSize); return &b }}

// NewSSEReader returns a reader over r.
func NewSSEReader(r io.Reader, opts SSEOptions) *SSEReader {
	max := opts.MaxFrameBytes
	if max <= 0 {
		max = DefaultMaxFrameBytes
	}
	return &SSEReader{r: r, max: max, onComment: opts.OnComment}
}

// LastEventID is the stream's last event id so far.
func (s *SSEReader) LastEventID() string { return s.lastID }

// Next returns the next dispatched frame. At the end of the stream it returns
// io.EOF (an unterminated last frame is dropped, as the specification says),
// or the read error. A *FrameTooLargeError does not end the stream.
func (s *SSEReader) Next() (Frame, error) {
	for {
		line, ok, err := s.nextLine()
		if err != nil {
			return Frame{}, err
		}
		if !ok {
			continue // the current frame overflowed; keep discarding
		}
		if len(line) == 0 {
			if s.discard {
				s.discard = false
				s.resetFrame()
				continue
			}
			f, dispatch := s.dispatch()
			if dispatch {
				return f, nil
			}
			continue
		}
		if err := s.processLine(line); err != nil {
			return Frame{}, err
		}
	}
}

// nextLine returns the next complete line (without its terminator). ok is
// false when a line had to be dropped because the frame overflowed.
func (s *SSEReader) nextLine() (line []byte, ok bool, err error) {
	for {
		if s.pos < s.end {
			chunk := s.buf[s.pos:s.end]
			if !s.bomDone {
				if len(chunk) < 3 && !s.eof && bytes.HasPrefix([]byte("\xEF\xBB\xBF"), chunk) {
					// Could be a split BOM; read more first.
					if err := s.fill(); err != nil {
						return nil, false, err
					}
					continue
				}
				s.bomDone = true
				if bytes.HasPrefix(chunk, []byte("\xEF\xBB\xBF")) {
					s.pos += 3
					continue
				}
			}
			if s.afterCR {
				s.afterCR = false
				if chunk[0] == '\n' {
					s.pos++
					continue
				}
			}
			i := bytes.IndexAny(chunk, "\r\n")
			if i >= 0 && len(s.line) == 0 && !s.discard && s.frameSize+i <= s.max {
				// The whole line is in the buffer: return it from there,
				// without a copy (processLine keeps nothing of it).
				s.frameSize += i
				if chunk[i] == '\r' {
					s.afterCR = true
				}
				s.pos += i + 1
				return chunk[:i:i], true, nil
			}
			if i < 0 {
				if err := s.appendLine(chunk); err != nil {
					s.pos = s.end
					return nil, false, err
				}
				s.pos = s.end
				continue
			}
			if err := s.appendLine(chunk[:i]); err != nil {
				s.pos += i
				return nil, false, err
			}
			if chunk[i] == '\r' {
				s.afterCR = true
			}
			s.pos += i + 1
			l := s.line
			s.line = s.line[:0]
			if s.discard && len(l) > 0 {
				return nil, false, nil
			}
			return l, true, nil
		}
		if s.eof {
			if s.readErr != nil {
				return nil, false, s.readErr
			}
			return nil, false, io.EOF
		}
		if len(s.line) == 0 {
			// No line half read: the read may wait for long (an idle run),
			// so keep no line buffer through it.
			s.line = nil
		}
		if err := s.fill(); err != nil {
			return nil, false, err
		}
	}
}

// appendLine adds b to the current line, enforcing the frame cap. In discard
// mode the bytes are dropped (a non-empty marker is kept so the line is not
// mistaken for a blank one).
func (s *SSEReader) appendLine(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if s.discard {
		if len(s.line) == 0 {
			s.line = append(s.line, 'x')
		}
		return nil
	}
	s.frameSize += len(b)
	if s.frameSize > s.max {
		ev := s.event
		s.discard = true
		s.data = nil
		s.hasData = false
		s.line = append(s.line[:0], 'x')
		s.frameSize = 0
		return &FrameTooLargeError{ID: s.lastID, Event: ev, Limit: s.max}
	}
	s.line = append(s.line, b...)
	return nil
}

// fill reads more. With nothing left in the buffer after a burst, the
// buffer goes back to sseBufs and the read waits in one byte of its own: no
// buffer is held while a run is idle. The caller keeps nothing from the
// buffer across a fill (lines that span reads are copied to s.line).
func (s *SSEReader) fill() error {
	if s.eof {
		return nil
	}
	if s.pos >= s.end {
		s.pos, s.end = 0, 0
		if !s.waited && s.bufp != nil {
			sseBufs.Put(s.bufp)
			s.buf, s.bufp = nil, nil
		}
	}
	s.waited = false
	// Bounded: a reader returning (0, nil) forever is reported, not spun on.
	for range 100 {
		var n int
		var err error
		if s.bufp == nil {
			n, err = s.r.Read(s.first[:])
			if n > 0 {
				s.bufp = sseBufs.Get().(*[]byte)
				s.buf = *s.bufp
				s.buf[0] = s.first[0]
				s.waited = true
			}
		} else {
			n, err = s.r.Read(s.buf[s.end:])
		}
		s.end += n
		if err != nil {
			if s.end == 0 && s.bufp != nil {
				sseBufs.Put(s.bufp)
				s.buf, s.bufp = nil, nil
			}
			s.eof = true
			if !errors.Is(err, io.EOF) {
				s.readErr = err
			}
			return nil
		}
		if n > 0 {
			return nil
		}
	}
	return io.ErrNoProgress
}

func (s *SSEReader) processLine(line []byte) error {
	if line[0] == ':' {
		if s.onComment != nil {
			c := line[1:]
			if len(c) > 0 && c[0] == ' ' {
				c = c[1:]
			}
			s.onComment(string(c))
		}
		return nil
	}
	field, value := line, []byte(nil)
	if i := bytes.IndexByte(line, ':'); i >= 0 {
		field, value = line[:i], line[i+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	switch string(field) {
	case "data":
		if s.hasData {
			s.data = append(s.data, '\n')
		}
		s.data = append(s.data, value...)
		s.hasData = true
	case "event":
		s.event = string(value)
	case "id":
		if bytes.IndexByte(value, 0) < 0 {
			s.lastID = string(value)
			s.frameID = true
		}
	}
	return nil
}

func (s *SSEReader) dispatch() (Frame, bool) {
	defer s.resetFrame()
	if !s.hasData {
		if s.frameID {
			s.droppedID = s.lastID
		}
		return Frame{}, false
	}
	// The data goes to the frame as it is: resetFrame starts the next one
	// afresh, so no buffer sized by the largest frame stays with the stream.
	f := Frame{ID: s.lastID, HasID: s.frameID, Event: s.event, Data: s.data, DroppedID: s.droppedID}
	s.droppedID = ""
	return f, true
}

func (s *SSEReader) resetFrame() {
	s.data = nil
	if cap(s.line) > 1<<20 {
		s.line = nil
	}
	s.hasData = false
	s.event = ""
	s.frameID = false
	s.frameSize = 0
}
