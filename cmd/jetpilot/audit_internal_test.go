package main

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAuditText(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"plain words, ünïcode ✓":  "plain words, ünïcode ✓",
		"tab\tnew\nline\r":        `tab\x09new\x0aline\x0d`,
		"esc\x1b[31mred\x7f":      `esc\x1b[31mred\x7f`,
		"c1 \u0085 \u009b":        `c1 \u0085 \u009b`,
		"bidi \u202e\u2066\u200f": `bidi \u202e\u2066\u200f`,
		"sep \u2028\u2029 \u061c": `sep \u2028\u2029 \u061c`,
		"bad \xff byte":           `bad \xff byte`,
		`back\slash \x1b`:         `back\\slash \\x1b`,
		`"quoted"`:                `"quoted"`,
	} {
		assert.Equal(t, want, auditText(in), "%q", in)
	}
	assert.Equal(t, `"say \"hi\"\x0a"`, auditQuote("say \"hi\"\n"))
	assert.Equal(t, "abc…", auditTruncate("abcdef", 3))
	assert.Equal(t, "abc", auditTruncate("abc", 3))
}

func TestAuditJSONSafe(t *testing.T) {
	t.Parallel()
	in := map[string]string{"r": "a\u202eb\u0085c\x7fd\u2066e ✓"}
	data, err := json.Marshal(in)
	require.NoError(t, err)
	safe := auditJSONSafe(data)
	assert.Equal(t, `{"r":"a\u202eb\u0085c\u007fd\u2066e ✓"}`, string(safe))
	var back map[string]string
	require.NoError(t, json.Unmarshal(safe, &back))
	assert.Equal(t, in, back, "the same document")
	assert.Equal(t, `"\ufffd"`, string(auditJSONSafe([]byte("\"\xff\""))))
}
