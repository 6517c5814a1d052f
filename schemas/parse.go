package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// parseJSON decodes one JSON value with numbers kept as json.Number (what
// the schema validator wants, and exact for integers). A syntax error is one
// problem on the whole message that says where the JSON breaks.
func parseJSON(data []byte) (any, *FieldError) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &FieldError{Reason: "empty message: want a JSON object"}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, &FieldError{Reason: describeJSONError(data, err, dec.InputOffset())}
	}
	// One value only: trailing data usually means two messages were
	// concatenated or the producer wrote a broken envelope.
	end := dec.InputOffset()
	if rest := bytes.TrimLeft(data[end:], " \t\r\n"); len(rest) > 0 {
		off := int64(len(data) - len(rest))
		return nil, &FieldError{Reason: fmt.Sprintf("invalid JSON: unexpected data after the top-level value %s", position(data, off))}
	}
	return tameNumbers(v), nil
}

func describeJSONError(data []byte, err error, fallback int64) string {
	var syn *json.SyntaxError
	switch {
	case errors.As(err, &syn):
		// Offset is just past the offending byte.
		return fmt.Sprintf("invalid JSON %s: %s", position(data, syn.Offset-1), syn.Error())
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Sprintf("invalid JSON: unexpected end of input %s", position(data, int64(len(data))))
	default:
		return fmt.Sprintf("invalid JSON %s: %s", position(data, fallback), err.Error())
	}
}

// position renders a byte offset as "at line L, column C (offset N)", the way
// an editor would find it. Columns count bytes.
func position(data []byte, off int64) string {
	off = max(0, min(off, int64(len(data))))
	line := 1 + bytes.Count(data[:off], []byte{'\n'})
	col := off - int64(bytes.LastIndexByte(data[:off], '\n'))
	return fmt.Sprintf("at line %d, column %d (offset %d)", line, col, off)
}

// Numbers beyond these bounds are never meaningful in a jetpilot message,
// and costly: the validator turns every number it checks into a big.Rat,
// which for a million digits or an exponent of 1e6 takes seconds.
const (
	maxNumberLen      = 32
	maxNumberExponent = 400
)

// hugeNumber stands in for an absurd JSON number. Its type is unknown to
// the validator, which reports it where the schema looks at it without
// doing arithmetic on it.
type hugeNumber string

// tameNumbers replaces absurd numbers in v (in place) with hugeNumber and
// returns v, itself replaced when it is one.
func tameNumbers(v any) any {
	switch d := v.(type) {
	case json.Number:
		if absurdNumber(string(d)) {
			return hugeNumber(d)
		}
	case map[string]any:
		for k, e := range d {
			if n, ok := e.(json.Number); ok {
				if absurdNumber(string(n)) {
					d[k] = hugeNumber(n)
				}
				continue
			}
			tameNumbers(e) // objects and arrays change in place
		}
	case []any:
		for i, e := range d {
			if n, ok := e.(json.Number); ok {
				if absurdNumber(string(n)) {
					d[i] = hugeNumber(n)
				}
				continue
			}
			tameNumbers(e)
		}
	}
	return v
}

func absurdNumber(n string) bool {
	if len(n) > maxNumberLen {
		return true
	}
	i := strings.IndexAny(n, "eE")
	if i < 0 {
		return false
	}
	exp, err := strconv.Atoi(strings.TrimPrefix(n[i+1:], "+"))
	return err != nil || exp > maxNumberExponent || exp < -maxNumberExponent
}

// duplicateKeys finds every member name that appears more than once in the
// same object, anywhere in data, which must be valid JSON (parseJSON
// accepted it). encoding/json keeps the last of them without a word, so a
// reviewer reading the first would see another job than the worker runs.
// Names are compared decoded, as encoding/json compares them. Each problem
// is on the object's path and names the key.
func duplicateKeys(data []byte) []FieldError {
	type frame struct {
		obj   bool
		path  string
		keys  map[string]struct{}
		key   string // the member being read (objects)
		index int    // the element being read (arrays)
	}
	var (
		stack     []frame // at most encoding/json's nesting limit deep
		out       []FieldError
		expectKey bool
	)
	childPath := func() string {
		if len(stack) == 0 {
			return ""
		}
		top := &stack[len(stack)-1]
		if top.obj {
			return join(top.path, top.key)
		}
		return join(top.path, strconv.Itoa(top.index))
	}
	// Every iteration moves i forward; a string is skipped whole.
	for i := 0; i < len(data); i++ {
		switch data[i] {
		case '{':
			stack = append(stack, frame{obj: true, path: childPath()})
			expectKey = true
		case '[':
			stack = append(stack, frame{path: childPath()})
			expectKey = false
		case '}', ']':
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
			expectKey = false
		case ',':
			if len(stack) > 0 {
				if top := &stack[len(stack)-1]; top.obj {
					expectKey = true
				} else {
					top.index++
				}
			}
		case '"':
			j, escaped, high := i+1, false, false
			for ; j < len(data) && data[j] != '"'; j++ {
				switch {
				case data[j] == '\\':
					escaped = true
					j++
				case data[j] >= 0x80:
					high = true
				}
			}
			if expectKey && len(stack) > 0 && j < len(data) {
				raw := data[i+1 : j]
				key := string(raw)
				if escaped || (high && !utf8.Valid(raw)) {
					_ = json.Unmarshal(data[i:j+1], &key)
				}
				top := &stack[len(stack)-1]
				if _, dup := top.keys[key]; dup {
					out = append(out, FieldError{Field: top.path, Reason: "duplicate key " + quote(key)})
				} else {
					if top.keys == nil {
						top.keys = make(map[string]struct{})
					}
					top.keys[key] = struct{}{}
				}
				top.key = key
				expectKey = false
			}
			i = j
		}
	}
	return out
}
