package spawn

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readAll parses every frame of r, stopping at the first error other than a
// too-large frame (which is recorded and skipped).
func readAll(t testing.TB, r io.Reader, opts SSEOptions) ([]Frame, []error, error) {
	t.Helper()
	sr := NewSSEReader(r, opts)
	var frames []Frame
	var skipped []error
	for range 100000 {
		f, err := sr.Next()
		if err != nil {
			if errors.Is(err, ErrFrameTooLarge) {
				skipped = append(skipped, err)
				continue
			}
			return frames, skipped, err
		}
		frames = append(frames, f)
	}
	t.Fatal("too many frames")
	return nil, nil, nil
}

func frameStrings(fs []Frame) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = f.ID + "|" + f.Event + "|" + string(f.Data)
	}
	return out
}

func TestSSESpecCases(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want []string // id|event|data
	}{
		{"lf", "id: 1\nevent: a\ndata: x\n\nid: 2\nevent: b\ndata: y\n\n", []string{"1|a|x", "2|b|y"}},
		{"crlf", "id: 1\r\nevent: a\r\ndata: x\r\n\r\n", []string{"1|a|x"}},
		{"lone cr", "id: 1\revent: a\rdata: x\r\r", []string{"1|a|x"}},
		{"mixed line ends", "id: 1\r\nevent: a\rdata: x\n\r\nid: 2\ndata: y\r\r", []string{"1|a|x", "2||y"}},
		{"multi-line data", "data: {\"a\":\ndata: 1}\n\n", []string{"|" + "|{\"a\":\n1}"}},
		{"no space after colon", "id:7\nevent:e\ndata:v\n\n", []string{"7|e|v"}},
		{"only one space stripped", "data:  two\n\n", []string{"|| two"}},
		{"empty data line", "data\n\n", []string{"||"}},
		{"data colon only", "data:\ndata:\n\n", []string{"||\n"}},
		{"comments and keepalives", ": keepalive\n\n:hi\nid: 3\n: inside\ndata: z\n\n", []string{"3||z"}},
		{"frame without data not dispatched", "event: nothing\nid: 4\n\ndata: after\n\n", []string{"4||after"}},
		{"id persists", "id: 5\ndata: a\n\ndata: b\n\n", []string{"5||a", "5||b"}},
		{"id with NUL ignored", "id: 5\ndata: a\n\nid: 6\x00\ndata: b\n\n", []string{"5||a", "5||b"}},
		{"retry and unknown fields ignored", "retry: 100\nfoo: bar\ndata: c\n\n", []string{"||c"}},
		{"event reset between frames", "event: a\ndata: 1\n\ndata: 2\n\n", []string{"|a|1", "||2"}},
		{"bom stripped", "\xEF\xBB\xBFdata: bom\n\n", []string{"||bom"}},
		{"unterminated last frame dropped", "data: ok\n\ndata: partial\n", []string{"||ok"}},
		{"blank lines between frames", "\n\n\ndata: q\n\n\n\n", []string{"||q"}},
		{"utf8", "data: héllo ✓ 𝄞\n\n", []string{"||héllo ✓ 𝄞"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var comments []string
			frames, _, err := readAll(t, strings.NewReader(tc.in), SSEOptions{OnComment: func(c string) { comments = append(comments, c) }})
			require.ErrorIs(t, err, io.EOF)
			assert.Equal(t, tc.want, frameStrings(frames))
		})
	}
}

func TestSSECommentsReported(t *testing.T) {
	t.Parallel()
	var comments []string
	_, _, err := readAll(t, strings.NewReader(": keepalive\n\n:x\n\n: a\r\n\r\n"), SSEOptions{
		OnComment: func(c string) { comments = append(comments, c) },
	})
	require.ErrorIs(t, err, io.EOF)
	assert.Equal(t, []string{"keepalive", "x", "a"}, comments)
}

func TestSSEHasID(t *testing.T) {
	t.Parallel()
	frames, _, err := readAll(t, strings.NewReader("id: 1\ndata: a\n\ndata: b\n\n"), SSEOptions{})
	require.ErrorIs(t, err, io.EOF)
	require.Len(t, frames, 2)
	assert.True(t, frames[0].HasID)
	assert.False(t, frames[1].HasID)
	assert.Equal(t, "1", frames[1].ID)
}

// sample is a multi-frame stream mixing every line ending, multi-line data,
// comments and multi-byte runes.
const sseSample = ": keepalive\n\n" +
	"id: 1\r\nevent: text_delta\r\ndata: {\"d\":\"héllo ✓\"}\r\n\r\n" +
	"id:2\nevent:text_delta\ndata:{\"d\":\ndata:\"𝄞 wörld\"}\n\n" +
	"id: 3\revent: x\rdata: é\r\r" +
	": comment\n" +
	"id: 4\nevent: last\ndata: ✓✓\n\n"

func TestSSESplitAtEveryOffset(t *testing.T) {
	t.Parallel()
	want, _, err := readAll(t, strings.NewReader(sseSample), SSEOptions{})
	require.ErrorIs(t, err, io.EOF)
	require.Len(t, want, 4)
	assert.Equal(t, "{\"d\":\n\"𝄞 wörld\"}", string(want[1].Data))

	b := []byte(sseSample)
	for i := 0; i <= len(b); i++ {
		for j := i; j <= len(b); j += 7 {
			r := &chunkReader{chunks: [][]byte{b[:i], b[i:j], b[j:]}}
			got, _, err := readAll(t, r, SSEOptions{})
			require.ErrorIs(t, err, io.EOF, "split at %d,%d", i, j)
			require.Equal(t, frameStrings(want), frameStrings(got), "split at %d,%d", i, j)
		}
	}
	got, _, err := readAll(t, iotest.OneByteReader(strings.NewReader(sseSample)), SSEOptions{})
	require.ErrorIs(t, err, io.EOF)
	assert.Equal(t, frameStrings(want), frameStrings(got))
	got, _, err = readAll(t, iotest.DataErrReader(strings.NewReader(sseSample)), SSEOptions{})
	require.ErrorIs(t, err, io.EOF)
	assert.Equal(t, frameStrings(want), frameStrings(got))
}

// chunkReader returns its chunks one Read at a time (empty chunks included,
// as (0, nil)).
type chunkReader struct {
	chunks [][]byte
	err    error
}

func (c *chunkReader) Read(p []byte) (int, error) {
	for len(c.chunks) > 0 {
		ch := c.chunks[0]
		n := copy(p, ch)
		if n < len(ch) {
			c.chunks[0] = ch[n:]
		} else {
			c.chunks = c.chunks[1:]
		}
		return n, nil
	}
	if c.err != nil {
		return 0, c.err
	}
	return 0, io.EOF
}

func TestSSECRLFSplitBetweenCRAndLF(t *testing.T) {
	t.Parallel()
	r := &chunkReader{chunks: [][]byte{[]byte("data: a\r"), []byte("\ndata: b\r"), []byte("\n\r"), []byte("\n")}}
	frames, _, err := readAll(t, r, SSEOptions{})
	require.ErrorIs(t, err, io.EOF)
	assert.Equal(t, []string{"||a\nb"}, frameStrings(frames))
}

func TestSSEFrameCap(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", 5000)
	in := "id: 1\nevent: small\ndata: ok\n\n" +
		"id: 2\nevent: huge\ndata: " + big + "\ndata: more\n\n" +
		"id: 3\nevent: small\ndata: after\n\n"
	for _, r := range []io.Reader{strings.NewReader(in), iotest.OneByteReader(strings.NewReader(in))} {
		frames, skipped, err := readAll(t, r, SSEOptions{MaxFrameBytes: 1024})
		require.ErrorIs(t, err, io.EOF)
		assert.Equal(t, []string{"1|small|ok", "3|small|after"}, frameStrings(frames))
		require.Len(t, skipped, 1)
		var ftl *FrameTooLargeError
		require.ErrorAs(t, skipped[0], &ftl)
		assert.Equal(t, "2", ftl.ID)
		assert.Equal(t, "huge", ftl.Event)
		assert.Equal(t, 1024, ftl.Limit)
		assert.Contains(t, ftl.Error(), "1024")
	}
}

func TestSSEFrameCapManySmallLines(t *testing.T) {
	t.Parallel()
	// Many data lines, each small, adding up past the cap.
	in := strings.Repeat("data: 0123456789\n", 200) + "\ndata: next\n\n"
	frames, skipped, err := readAll(t, strings.NewReader(in), SSEOptions{MaxFrameBytes: 1000})
	require.ErrorIs(t, err, io.EOF)
	assert.Len(t, skipped, 1)
	assert.Equal(t, []string{"||next"}, frameStrings(frames))
}

// endlessReader is an endless line without a terminator.
type endlessReader struct{ n int }

func (e *endlessReader) Read(p []byte) (int, error) {
	if e.n <= 0 {
		return 0, io.EOF
	}
	k := min(len(p), e.n)
	for i := range k {
		p[i] = 'a'
	}
	e.n -= k
	return k, nil
}

func TestSSEEndlessLineIsAnErrorNotMemory(t *testing.T) {
	t.Parallel()
	sr := NewSSEReader(io.MultiReader(strings.NewReader("data: "), &endlessReader{n: 4 << 20}), SSEOptions{MaxFrameBytes: 64 << 10})
	_, err := sr.Next()
	require.ErrorIs(t, err, ErrFrameTooLarge)
	assert.LessOrEqual(t, cap(sr.line), 128<<10, "line buffer must stay bounded")
	_, err = sr.Next() // discards the rest, then the stream ends
	require.ErrorIs(t, err, io.EOF)
	assert.LessOrEqual(t, cap(sr.line), 128<<10)
}

func TestSSEReadErrorPropagates(t *testing.T) {
	t.Parallel()
	boom := errors.New("connection reset by peer")
	r := &chunkReader{chunks: [][]byte{[]byte("data: a\n\ndata: partial")}, err: boom}
	sr := NewSSEReader(r, SSEOptions{})
	f, err := sr.Next()
	require.NoError(t, err)
	assert.Equal(t, "a", string(f.Data))
	_, err = sr.Next()
	require.ErrorIs(t, err, boom)
}

func TestSSENoProgressReader(t *testing.T) {
	t.Parallel()
	sr := NewSSEReader(zeroReader{}, SSEOptions{})
	_, err := sr.Next()
	require.ErrorIs(t, err, io.ErrNoProgress)
}

type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

func FuzzSSE(f *testing.F) {
	f.Add([]byte(sseSample), uint8(3))
	f.Add([]byte("data: a\r\n\r\ndata:b\r\r"), uint8(1))
	f.Add([]byte("\xEF\xBB\xBFid: 1\nevent: e\ndata: x\ndata: y\n\n"), uint8(7))
	f.Add([]byte(": keepalive\n\nid:\x00\ndata\n\n"), uint8(0))
	f.Add([]byte("data: "+strings.Repeat("z", 300)+"\n\ndata: ok\n\n"), uint8(2))
	f.Fuzz(func(t *testing.T, in []byte, step uint8) {
		const max = 256
		opts := SSEOptions{MaxFrameBytes: max}
		whole, wholeSkipped, err := readAll(t, bytes.NewReader(in), opts)
		require.ErrorIs(t, err, io.EOF)
		// Chunking must not change the result.
		var chunks [][]byte
		s := int(step%13) + 1
		for i := 0; i < len(in); i += s {
			chunks = append(chunks, in[i:min(i+s, len(in))])
		}
		got, gotSkipped, err := readAll(t, &chunkReader{chunks: chunks}, opts)
		require.ErrorIs(t, err, io.EOF)
		require.Equal(t, frameStrings(whole), frameStrings(got))
		require.Equal(t, len(wholeSkipped), len(gotSkipped))
		for _, f := range whole {
			require.LessOrEqual(t, len(f.Data), max)
		}
	})
}

// burstReader hands out its bursts one Read at a time (a burst larger than
// the caller's slice goes out over several) and records the size of every
// slice it was asked to fill. After the last burst it returns io.EOF.
type burstReader struct {
	bursts []string
	asked  []int
}

func (b *burstReader) Read(p []byte) (int, error) {
	b.asked = append(b.asked, len(p))
	if len(b.bursts) == 0 {
		return 0, io.EOF
	}
	n := copy(p, b.bursts[0])
	if b.bursts[0] = b.bursts[0][n:]; b.bursts[0] == "" {
		b.bursts = b.bursts[1:]
	}
	return n, nil
}

// Between bursts the reader waits with a one-byte read and no buffer of its
// own (one reader per run in flight, and an idle run waits for long); the
// burst is then read into a buffer, and a frame whose last byte comes alone
// is still dispatched without waiting for more.
func TestSSEWaitsBetweenBurstsWithoutABuffer(t *testing.T) {
	br := &burstReader{bursts: []string{"id: 1\ndata: first\n\n", "data: second\n", "\n"}}
	sr := NewSSEReader(br, SSEOptions{})
	assert.Nil(t, sr.bufp, "no buffer before the first byte")

	f, err := sr.Next()
	require.NoError(t, err)
	assert.Equal(t, "first", string(f.Data))
	assert.Equal(t, "1", f.ID)
	assert.Equal(t, []int{1, sseBufSize}, br.asked, "a wait of one byte, then the burst into a buffer")
	assert.NotNil(t, sr.bufp, "the buffer goes back at the next read")

	f, err = sr.Next()
	require.NoError(t, err)
	assert.Equal(t, "second", string(f.Data))
	// The frame's terminator came alone: the one-byte wait that got it
	// ends the frame, with no further read.
	assert.Equal(t, []int{1, sseBufSize, 1, sseBufSize, 1}, br.asked)

	_, err = sr.Next()
	require.ErrorIs(t, err, io.EOF)
	assert.Nil(t, sr.bufp, "a reader at the end holds no buffer")
}
