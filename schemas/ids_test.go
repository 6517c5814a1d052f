package schemas

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestValidateIDs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"profile empty", ValidateProfile(""), `profile "": must not be empty`},
		{"profile gt", ValidateProfile(">"), `profile ">": contains the wildcard '>' at byte 0; only letters, digits, '_' or '-' are allowed`},
		{"profile dot", ValidateProfile("gpu.big"), `profile "gpu.big": contains a dot at byte 3`},
		{"profile colon", ValidateProfile("a:b"), `contains ':' at byte 1`},
		{"profile long", ValidateProfile(strings.Repeat("p", 65)), "must be at most 64 characters of letters, digits, '_' or '-' (got 65)"},
		{"job id space", ValidateJobID("a b"), `job id "a b": contains whitespace at byte 1; only A-Za-z0-9._:- are allowed`},
		{"job id long", ValidateJobID(strings.Repeat("j", 129)), "must be at most 128 characters of A-Za-z0-9._:- (got 129)"},
		{"job id star", ValidateJobID("a*"), `contains the wildcard '*' at byte 1`},
		{"job id empty", ValidateJobID(""), "must not be empty"},
	} {
		require.Error(t, tc.err, tc.name)
		assert.Contains(t, tc.err.Error(), tc.want, tc.name)
	}
	require.NoError(t, ValidateJobID("build:42.a-b_C"))
	require.NoError(t, ValidateJobID(strings.Repeat("j", 128)))
	require.NoError(t, ValidateProfile("gpu-big_2"))
	require.NoError(t, ValidateProfile(strings.Repeat("p", 64)))
}

// idCorpus is every one-byte string, and strings around the length limits.
func idCorpus() []string {
	var out []string
	for c := range 256 {
		out = append(out, string([]byte{byte(c)}), "a"+string([]byte{byte(c)})+"b")
	}
	for _, n := range []int{0, 63, 64, 65, 127, 128, 129} {
		out = append(out, strings.Repeat("x", n), strings.Repeat(".", n))
	}
	return append(out, "build:42.a-b_C", "a..b", ".", "é", "a\x00")
}

// TestIDRulesMatchSchemas holds the patterns the JSON Schemas state for job
// ids and profiles to ValidJobID and ValidProfile, the one definition.
func TestIDRulesMatchSchemas(t *testing.T) {
	t.Parallel()
	pattern := func(schema string, path ...string) *regexp.Regexp {
		t.Helper()
		raw, err := SchemaJSON(schema)
		require.NoError(t, err)
		var node any
		require.NoError(t, json.Unmarshal(raw, &node))
		for _, k := range path {
			m, ok := node.(map[string]any)
			require.True(t, ok, "%s: %v", schema, path)
			node = m[k]
		}
		s, ok := node.(string)
		require.True(t, ok, "%s: %v is not a string", schema, path)
		return regexp.MustCompile(s)
	}
	rules := []struct {
		name  string
		re    *regexp.Regexp
		valid func(string) bool
	}{
		{"job id", pattern("job", "properties", "id", "pattern"), ValidJobID},
		{"decision job_id", pattern("decision", "properties", "job_id", "pattern"), ValidJobID},
		{"approval job_id", pattern("approval", "properties", "job_id", "pattern"), ValidJobID},
		{"job profile", pattern("job", "properties", "profile", "pattern"), ValidProfile},
		{"job requested_by", pattern("job", "properties", "requested_by", "pattern"), ValidRequester},
		{"job session_key", pattern("job", "properties", "session_key", "pattern"), ValidSessionKey},
		{"job concurrency_key", pattern("job", "properties", "concurrency_key", "pattern"), ValidConcurrencyKey},
	}
	for _, r := range rules {
		for _, s := range idCorpus() {
			assert.Equal(t, r.re.MatchString(s), r.valid(s), "%s %q", r.name, s)
		}
	}
	// Signatures: every schema that has one states the same shapes.
	validKey := "U" + strings.Repeat("A", 54) + "7"
	validSig := strings.Repeat("a", 84) + "_-"
	var keys, sigs []string
	for _, s := range idCorpus() {
		keys = append(keys, s, "U"+s, validKey[:max(0, len(validKey)-len(s))]+s)
		sigs = append(sigs, s, validSig[:max(0, len(validSig)-len(s))]+s)
	}
	keys = append(keys, validKey, "U"+strings.Repeat("2", 55), "u"+validKey[1:], validKey+"A", validKey[:55])
	sigs = append(sigs, validSig, validSig+"=", validSig[:85]+"+", validSig[:85]+"/", validSig+"a", validSig[:85])
	for _, schema := range []string{"job", "decision"} {
		keyRe := pattern(schema, "$defs", "signature", "properties", "key", "pattern")
		sigRe := pattern(schema, "$defs", "signature", "properties", "sig", "pattern")
		for _, k := range keys {
			assert.Equal(t, keyRe.MatchString(k), ValidSignatureShape(Signature{Key: k, Sig: validSig}), "%s key %q", schema, k)
		}
		for _, s := range sigs {
			assert.Equal(t, sigRe.MatchString(s), ValidSignatureShape(Signature{Key: validKey, Sig: s}), "%s sig %q", schema, s)
		}
	}
	for _, s := range idCorpus() {
		assert.Equal(t, ValidJobID(s), ValidateJobID(s) == nil, "job id %q", s)
		assert.Equal(t, ValidProfile(s), ValidateProfile(s) == nil, "profile %q", s)
	}
}
