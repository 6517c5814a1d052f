package signing

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzVerify: no input panics Verify; every refusal is one of the four
// errors; the canonical document is canonical (canonicalising it again
// changes nothing) and has no top-level "signature".
func FuzzVerify(f *testing.F) {
	for _, file := range []string{signedExampleFile, signedJobFile, vectorFile} {
		data, err := os.ReadFile(file)
		require.NoError(f, err)
		f.Add(data)
	}
	for _, s := range []string{``, `{}`, `[]`, `{"signature":null}`, `{"signature":{"key":"","sig":""}}`,
		`{"a":1,"sig\u006eature":{}}`, `{"a":"\ud800"}`, `{"a":1e400}`, `{"b":[{"signature":1}],"signature":2,"a":-0.0}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		key, err := Verify(data)
		if err == nil {
			require.NotEmpty(t, key)
		} else {
			known := 0
			for _, e := range []error{ErrNoSignature, ErrMalformedSignature, ErrBadSignature, ErrMalformedDocument} {
				if errors.Is(err, e) {
					known++
				}
			}
			require.Equal(t, 1, known, "exactly one of the errors: %v", err)
		}
		doc, err := CanonicalDocument(data)
		if err != nil {
			require.ErrorIs(t, err, ErrMalformedDocument)
			return
		}
		again, err := Canonicalize(doc)
		require.NoError(t, err)
		require.True(t, bytes.Equal(doc, again), "canonical: %q", doc)
		var m map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(doc, &m))
		require.NotContains(t, m, SignatureMember)
	})
}
