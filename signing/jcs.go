package signing

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/gowebpki/jcs"
)

// SignatureMember is the top-level member that carries a signature. It is
// left out of what is signed.
const SignatureMember = "signature"

// Canonicalize returns the RFC 8785 (JCS) form of the JSON text raw: no
// insignificant whitespace, members sorted by their UTF-16 code units,
// strings and numbers written as ECMAScript's JSON.stringify writes them.
// It rejects what is not I-JSON (RFC 7493): invalid JSON or UTF-8, member
// names given twice in one object, lone surrogates, and numbers out of the
// range of an IEEE 754 double. The errors wrap ErrMalformedDocument.
func Canonicalize(raw []byte) ([]byte, error) {
	if raw == nil {
		raw = []byte{} // jcs treats nil apart; empty input is simply not JSON
	}
	out, err := jcs.Transform(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: not canonicalisable JSON (RFC 8785): %v", ErrMalformedDocument, err)
	}
	return out, nil
}

// CanonicalDocument returns JCS(raw without its top-level "signature"
// member): the bytes whose SHA-256 is signed. raw must be a JSON object.
// Duplicate member names anywhere are refused, "signature" included, so no
// reader can see another document (or another signature) than the one
// checked.
func CanonicalDocument(raw []byte) ([]byte, error) {
	doc, _, err := splitSignature(raw)
	return doc, err
}

// DocumentDigest is SHA-256(JCS(raw without its top-level "signature"
// member)): the 32 bytes a signature signs. raw must be a JSON object.
func DocumentDigest(raw []byte) ([32]byte, error) {
	doc, _, err := splitSignature(raw)
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(doc), nil
}

// splitSignature canonicalises raw, which must be an object, and returns
// the canonical document without its top-level "signature" member, and
// that member's canonical value (nil when there is none).
//
// The member is cut out of the canonical text rather than out of raw:
// there every name is written one way only (a "sig\u006eature" in raw is
// "signature" there), so nothing can smuggle a second signature member
// past the cut, and since the other members keep their order the result
// is exactly JCS of the document without it.
func splitSignature(raw []byte) (doc, sig []byte, err error) {
	canon, err := Canonicalize(raw)
	if err != nil {
		return nil, nil, err
	}
	if len(canon) < 2 || canon[0] != '{' {
		return nil, nil, fmt.Errorf("%w: want a JSON object", ErrMalformedDocument)
	}
	members, err := topLevelMembers(canon)
	if err != nil {
		// Canonical output always splits; this would be a bug in jcs.
		return nil, nil, fmt.Errorf("%w: %v", ErrMalformedDocument, err)
	}
	name := []byte(`"` + SignatureMember + `"`)
	for _, m := range members {
		if !bytes.Equal(canon[m.start:m.colon], name) {
			continue
		}
		sig = canon[m.colon+1 : m.end]
		// Cut the member and one comma next to it.
		start, end := m.start, m.end
		switch {
		case end < len(canon)-1: // a member follows: take its comma
			end++
		case start > 1: // the last of several: take the comma before
			start--
		}
		doc = make([]byte, 0, len(canon)-(end-start))
		doc = append(append(doc, canon[:start]...), canon[end:]...)
		return doc, sig, nil
	}
	return canon, nil, nil
}

// member is one top-level member of a canonical object: canon[start:colon]
// is its quoted name, canon[colon+1:end] its value.
type member struct{ start, colon, end int }

// topLevelMembers splits a canonical JSON object (compact, so no white
// space anywhere but inside strings) into its members.
func topLevelMembers(canon []byte) ([]member, error) {
	var out []member
	i := 1
	if canon[i] == '}' {
		return nil, nil
	}
	for {
		start := i
		i = skipString(canon, i)
		if i < 0 || i >= len(canon) || canon[i] != ':' {
			return nil, errors.New("malformed member name")
		}
		colon := i
		i = skipValue(canon, i+1)
		if i < 0 || i >= len(canon) {
			return nil, errors.New("malformed member value")
		}
		out = append(out, member{start, colon, i})
		switch canon[i] {
		case ',':
			i++
		case '}':
			if i != len(canon)-1 {
				return nil, errors.New("data after the object")
			}
			return out, nil
		default:
			return nil, errors.New("malformed object")
		}
	}
}

// skipString returns the index just past the string starting at b[i], or
// -1.
func skipString(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}

// skipValue returns the index just past the value starting at b[i] in
// compact JSON, or -1.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				if i < 0 {
					return -1
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return -1
	default: // a number or a literal
		for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' {
			i++
		}
		return i
	}
}
