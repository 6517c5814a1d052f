package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// Text from messages — tool names and arguments an agent proposed, a
// publisher's metadata, an agent's output, error messages — is printed for
// a human at a terminal. Any of it can hold what a terminal acts on (an ESC
// sequence that clears the line, a carriage return that goes back over it)
// or what reorders or hides text (bidi controls, zero-width characters), so
// a dangerous tool call could be made to look like a harmless one. Every
// view prints such text through safeLine or safeBlock, and JSON output
// through writeJSON.

// safeLine makes s safe to print as one line: control characters (newline
// and tab too), DEL, C1 controls, Unicode format characters (bidi controls,
// zero-width characters, the BOM), line and paragraph separators, invisible
// fillers and bytes that are not UTF-8 are shown as visible escapes: \x1b,
// \r, \n, \u202e, \xff.
func safeLine(s string) string { return escapeText(s, false) }

// safeBlock is safeLine for long text such as an agent's output: newlines
// and tabs are kept as they are.
func safeBlock(s string) string { return escapeText(s, true) }

// hidden reports whether r must not reach a terminal as it is.
func hidden(r rune) bool {
	switch r {
	case '\u034f', // combining grapheme joiner
		'\u115f', '\u1160', '\u3164', '\uffa0': // Hangul fillers: letters that show nothing
		return true
	}
	return unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp)
}

// named are the escapes of Go and C for the common control characters.
var named = [utf8.RuneSelf]string{'\a': `\a`, '\b': `\b`, '\f': `\f`, '\n': `\n`, '\r': `\r`, '\t': `\t`, '\v': `\v`}

func escapeText(s string, keepLines bool) string {
	var b strings.Builder
	done := 0 // s[:done] is in b
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		invalid := r == utf8.RuneError && size == 1
		if !invalid && (!hidden(r) || keepLines && (r == '\n' || r == '\t')) {
			i += size
			continue
		}
		if b.Len() == 0 {
			b.Grow(len(s) + 16)
		}
		b.WriteString(s[done:i])
		switch {
		case !invalid && r < utf8.RuneSelf && named[r] != "":
			b.WriteString(named[r])
		case invalid || r < utf8.RuneSelf:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
		i += size
		done = i
	}
	if done == 0 {
		return s
	}
	b.WriteString(s[done:])
	return b.String()
}

// writeJSON writes v as one JSON document (indented when indent) and a
// newline. encoding/json already escapes control characters below 0x20 and
// U+2028/U+2029, and replaces bytes that are not UTF-8; writeJSON also
// escapes DEL, C1 controls, bidi controls and the other hidden characters
// (as \u202e, a surrogate pair above U+FFFF), so a document printed to a
// terminal shows them, and decodes to the same value.
func writeJSON(w io.Writer, v any, indent bool) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	if indent {
		enc.SetIndent("", "  ")
	}
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := w.Write(escapeJSON(buf.Bytes()))
	return err
}

// escapeJSON escapes hidden characters in encoded JSON. Outside strings JSON
// has only ASCII, and the encoder escapes ASCII controls in strings, so every
// hidden character at or above DEL is inside a string, where \uXXXX means it.
func escapeJSON(data []byte) []byte {
	var out []byte
	done := 0
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r < utf8.RuneSelf-1 || !hidden(r) || r == utf8.RuneError && size == 1 {
			i += size
			continue
		}
		if out == nil {
			out = make([]byte, 0, len(data)+32)
		}
		out = append(out, data[done:i]...)
		if r > 0xffff {
			hi, lo := utf16.EncodeRune(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, hi, lo)
		} else {
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		i += size
		done = i
	}
	if out == nil {
		return data
	}
	return append(out, data[done:]...)
}
