package signing

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

func newSeed(t testing.TB) ([]byte, string) {
	t.Helper()
	seed, pub, err := NewSeed()
	require.NoError(t, err)
	require.True(t, bytes.HasPrefix(seed, []byte("SU")), "a user seed")
	require.True(t, nkeys.IsValidPublicUserKey(pub))
	return seed, pub
}

func sampleDecision() schemas.Decision {
	return schemas.Decision{
		Schema: schemas.DecisionSchemaID, ApprovalID: "job-1:1", JobID: "job-1", All: schemas.DecideAllow,
		DecidedBy: "alice", PendingDigest: strings.Repeat("ab", 32), DecidedAt: time.Date(2025, 4, 5, 14, 2, 11, 0, time.UTC),
	}
}

// signedDecision is a signed sampleDecision as published.
func signedDecision(t testing.TB, seed []byte) []byte {
	t.Helper()
	d := sampleDecision()
	require.NoError(t, SignDecision(&d, seed))
	raw, err := schemas.Encode(d)
	require.NoError(t, err)
	return raw
}

func TestSignVerify(t *testing.T) {
	t.Parallel()
	seed, pub := newSeed(t)
	got, err := PublicKey(seed)
	require.NoError(t, err)
	assert.Equal(t, pub, got)

	raw := signedDecision(t, seed)
	key, err := Verify(raw)
	require.NoError(t, err)
	assert.Equal(t, pub, key)

	// What jetpilot receives decodes, and the schema takes the signature.
	d, err := schemas.DecodeDecision(raw)
	require.NoError(t, err)
	require.NotNil(t, d.Signature)
	assert.Equal(t, pub, d.Signature.Key)
	assert.Len(t, d.Signature.Sig, schemas.SignatureSigLen)

	// The same document written otherwise (order, white space, escapes)
	// still verifies: the signature is over the canonical form.
	var m map[string]any
	require.NoError(t, json.Unmarshal(raw, &m))
	pretty, err := json.MarshalIndent(m, "", "    ") // sorted by Go, HTML-escaped: another text
	require.NoError(t, err)
	require.NotEqual(t, raw, pretty)
	key, err = Verify(pretty)
	require.NoError(t, err)
	assert.Equal(t, pub, key)

	// Signing ignores a signature already there.
	again, err := Sign(raw, seed)
	require.NoError(t, err)
	assert.Equal(t, *d.Signature, again)
}

func TestSignJob(t *testing.T) {
	t.Parallel()
	seed, pub := newSeed(t)
	j := schemas.Job{ID: "job-1", Prompt: "deploy <it> & tell me", RequestedBy: "ci-bot@example.com",
		Overrides: &schemas.Overrides{MaxTurns: 3, AutoApprove: &schemas.AutoApprove{Mode: schemas.AutoApproveNone}},
		Metadata:  map[string]string{"b": "2", "a": "1"}}
	require.NoError(t, SignJob(&j, seed))
	raw, err := schemas.Encode(j)
	require.NoError(t, err)
	key, err := Verify(raw)
	require.NoError(t, err)
	assert.Equal(t, pub, key)
	decoded, err := schemas.DecodeJob(raw)
	require.NoError(t, err)
	assert.Equal(t, j, decoded, "the signed job decodes with its signature and requester")

	j.Prompt = "deploy something else"
	raw, err = schemas.Encode(j)
	require.NoError(t, err)
	_, err = Verify(raw)
	assert.ErrorIs(t, err, ErrBadSignature)
}

func TestSignDecisionUTC(t *testing.T) {
	t.Parallel()
	seed, _ := newSeed(t)
	d := sampleDecision()
	d.DecidedAt = time.Date(2025, 4, 5, 16, 2, 11, 0, time.FixedZone("CEST", 2*3600))
	require.NoError(t, SignDecision(&d, seed))
	assert.Equal(t, time.UTC, d.DecidedAt.Location())
	raw, err := schemas.Encode(d)
	require.NoError(t, err)
	assert.Contains(t, string(raw), `"decided_at":"2025-04-05T14:02:11Z"`)
	_, err = schemas.DecodeDecision(raw)
	require.NoError(t, err)
}

// replaceSignature sets the top-level signature of raw to member.
func replaceSignature(t testing.TB, raw []byte, member string) []byte {
	t.Helper()
	var m map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(raw, &m))
	if member == "" {
		delete(m, "signature")
	} else {
		m["signature"] = json.RawMessage(member)
	}
	out, err := json.Marshal(m)
	require.NoError(t, err)
	return out
}

func TestVerifyRefuses(t *testing.T) {
	t.Parallel()
	seed, pub := newSeed(t)
	raw := signedDecision(t, seed)
	var d schemas.Decision
	require.NoError(t, json.Unmarshal(raw, &d))
	sig := d.Signature.Sig
	sigBytes, err := base64.RawURLEncoding.DecodeString(sig)
	require.NoError(t, err)

	otherSeed, otherPub := newSeed(t)
	accountKP, err := nkeys.CreateAccount()
	require.NoError(t, err)
	accountPub, err := accountKP.PublicKey()
	require.NoError(t, err)
	badSum := string(brokenChecksum([]byte(pub)))
	flipped := append([]byte(nil), sigBytes...)
	flipped[10] ^= 1
	// The last character of 86 carries 2 spare bits; setting them is the
	// same bytes in another (non-canonical) text.
	nonCanonical := sig[:85] + string(base64URLNext(sig[85]))
	member := func(key, s string) string {
		b, err := json.Marshal(map[string]string{"key": key, "sig": s})
		require.NoError(t, err)
		return string(b)
	}

	for _, tc := range []struct {
		name string
		doc  []byte
		want error
		text string
	}{
		{"no signature", replaceSignature(t, raw, ""), ErrNoSignature, `no "signature" member`},
		{"null", replaceSignature(t, raw, `null`), ErrMalformedSignature, "want an object"},
		{"string", replaceSignature(t, raw, `"`+sig+`"`), ErrMalformedSignature, "want an object"},
		{"key missing", replaceSignature(t, raw, `{"sig":"`+sig+`"}`), ErrMalformedSignature, "want both key and sig"},
		{"extra member", replaceSignature(t, raw, `{"key":"`+pub+`","sig":"`+sig+`","alg":"none"}`), ErrMalformedSignature, `unknown member "alg"`},
		{"key in capitals", replaceSignature(t, raw, `{"KEY":"`+pub+`","sig":"`+sig+`"}`), ErrMalformedSignature, `unknown member "KEY"`},
		{"key number", replaceSignature(t, raw, `{"key":1,"sig":"`+sig+`"}`), ErrMalformedSignature, "must be strings"},
		{"lowercase key", replaceSignature(t, raw, member(strings.ToLower(pub), sig)), ErrMalformedSignature, "not a valid nkey user public key"},
		{"seed as key", replaceSignature(t, raw, member(string(seed), sig)), ErrMalformedSignature, "a seed, not a public key"},
		{"account key", replaceSignature(t, raw, member(accountPub, sig)), ErrMalformedSignature, "not a user key"},
		{"bad checksum", replaceSignature(t, raw, member(badSum, sig)), ErrMalformedSignature, "not a valid nkey user public key"},
		{"padded sig", replaceSignature(t, raw, member(pub, sig+"==")), ErrMalformedSignature, "base64url without padding"},
		{"standard base64", replaceSignature(t, raw, member(pub, base64.RawStdEncoding.EncodeToString(bytesWithPlusSlash()))), ErrMalformedSignature, "base64url"},
		{"standard base64 padded", replaceSignature(t, raw, member(pub, base64.StdEncoding.EncodeToString(sigBytes))), ErrMalformedSignature, "base64url"},
		{"non-canonical base64", replaceSignature(t, raw, member(pub, nonCanonical)), ErrMalformedSignature, "base64url"},
		{"short sig", replaceSignature(t, raw, member(pub, base64.RawURLEncoding.EncodeToString(sigBytes[:32]))), ErrMalformedSignature, "is 32 bytes"},
		{"empty sig", replaceSignature(t, raw, member(pub, "")), ErrMalformedSignature, "is 0 bytes"},
		{"flipped bit", replaceSignature(t, raw, member(pub, base64.RawURLEncoding.EncodeToString(flipped))), ErrBadSignature, "does not match"},
		{"another key", replaceSignature(t, raw, member(otherPub, sig)), ErrBadSignature, otherPub},
		{"changed document", bytes.Replace(raw, []byte(`"all":"allow"`), []byte(`"all":"deny"`), 1), ErrBadSignature, "changed after signing"},
		{"added member", bytes.Replace(raw, []byte(`{"schema"`), []byte(`{"x":1,"schema"`), 1), ErrBadSignature, ""},
		{"duplicate member", bytes.Replace(raw, []byte(`{"schema"`), []byte(`{"all":"deny","schema"`), 1), ErrMalformedDocument, "Duplicate key"},
		{"two signatures", bytes.Replace(raw, []byte(`{"schema"`), []byte(`{"signature":{},"schema"`), 1), ErrMalformedDocument, "Duplicate key"},
		{"not JSON", raw[:len(raw)-1], ErrMalformedDocument, ""},
		{"array", []byte(`[` + string(raw) + `]`), ErrMalformedDocument, "want a JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, err := Verify(tc.doc)
			require.ErrorIs(t, err, tc.want, "%s", tc.doc)
			assert.Contains(t, err.Error(), tc.text)
			assert.Empty(t, key)
			assert.NotContains(t, err.Error(), string(seed), "a seed never reaches an error")
			for _, other := range []error{ErrNoSignature, ErrMalformedSignature, ErrBadSignature, ErrMalformedDocument} {
				if other != tc.want {
					assert.NotErrorIs(t, err, other)
				}
			}
		})
	}

	// A signature by the other key verifies as the other key.
	d2 := sampleDecision()
	require.NoError(t, SignDecision(&d2, otherSeed))
	raw2, err := schemas.Encode(d2)
	require.NoError(t, err)
	key, err := Verify(raw2)
	require.NoError(t, err)
	assert.Equal(t, otherPub, key)
}

// base64URLNext is the next character of the base64url alphabet, so the
// spare bits of a final character change and the bytes do not.
func base64URLNext(c byte) byte {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, c)
	return alphabet[i^1]
}

// bytesWithPlusSlash are 64 bytes whose standard base64 has + and /.
func bytesWithPlusSlash() []byte {
	return bytes.Repeat([]byte{0xfb, 0xff}, ed25519.SignatureSize/2)
}

// brokenChecksum changes one character in the middle of an nkey.
func brokenChecksum(key []byte) []byte {
	out := append([]byte(nil), key...)
	if out[20] == 'A' {
		out[20] = 'B'
	} else {
		out[20] = 'A'
	}
	return out
}

func TestSignRefusesOtherSeeds(t *testing.T) {
	t.Parallel()
	doc := []byte(`{"a":1}`)
	account, err := nkeys.CreateAccount()
	require.NoError(t, err)
	accountSeed, err := account.Seed()
	require.NoError(t, err)
	user, _ := newSeed(t)
	for name, seed := range map[string][]byte{
		"account seed": accountSeed, "public key": []byte("UBZS7HK3WX3M3ZGMON5JHVKXTE7J74NLFJ2GCDKUX2PIG4OY7ZVXI7ZL"),
		"garbage": []byte("not a seed"), "empty": nil, "broken checksum": brokenChecksum(user),
	} {
		_, err := Sign(doc, seed)
		require.ErrorIs(t, err, ErrBadSeed, name)
		if len(seed) > 0 {
			assert.NotContains(t, err.Error(), string(seed), name)
		}
		_, err = PublicKey(seed)
		require.ErrorIs(t, err, ErrBadSeed, name)
	}
	_, err = Sign([]byte(`[1]`), user)
	require.ErrorIs(t, err, ErrMalformedDocument)
	_, err = Sign([]byte(`{"a":1,"a":2}`), user)
	require.ErrorIs(t, err, ErrMalformedDocument)
}

func TestPendingDigest(t *testing.T) {
	t.Parallel()
	calls := []schemas.ToolCall{
		{ID: "c1", Name: "stakpak__run_command", Arguments: json.RawMessage(`{"command": "ls -la > out && cat out", "n": 1.50}`), Rule: "prod"},
		{ID: "c2", Name: "view", Arguments: json.RawMessage(`{"path":"/"}`), ArgumentsTruncated: true},
	}
	d, err := PendingDigest(calls)
	require.NoError(t, err)
	assert.Regexp(t, `^[0-9a-f]{64}$`, d)

	// As the approval request publishes it, in any spelling.
	req := schemas.ApprovalRequest{ApprovalID: "a", JobID: "j", PendingToolCalls: calls}
	published, err := json.Marshal(req) // HTML-escaped, unlike schemas.Encode: the digest does not care
	require.NoError(t, err)
	var back struct {
		PendingToolCalls json.RawMessage `json:"pending_tool_calls"`
	}
	require.NoError(t, json.Unmarshal(published, &back))
	fromRaw, err := PendingDigestJSON(back.PendingToolCalls)
	require.NoError(t, err)
	assert.Equal(t, d, fromRaw)
	fromRaw, err = PendingDigestJSON([]byte(`[{"name":"stakpak__run_command","id":"c1","rule":"prod","arguments":{"n":1.5,"command":"ls -la \u003e out \u0026\u0026 cat out"}},
		{"arguments_truncated":true,"arguments":{"path":"\/"},"id":"c2","name":"view"}]`))
	require.NoError(t, err)
	assert.Equal(t, d, fromRaw)

	// Any change to any call is another digest.
	for name, change := range map[string]func(c []schemas.ToolCall){
		"argument": func(c []schemas.ToolCall) {
			c[0].Arguments = json.RawMessage(`{"command":"ls -la > out && cat out","n":1.51}`)
		},
		"name":      func(c []schemas.ToolCall) { c[1].Name = "view2" },
		"id":        func(c []schemas.ToolCall) { c[1].ID = "c3" },
		"truncated": func(c []schemas.ToolCall) { c[1].ArgumentsTruncated = false },
		"rule":      func(c []schemas.ToolCall) { c[0].Rule = "" },
		"order":     func(c []schemas.ToolCall) { c[0], c[1] = c[1], c[0] },
	} {
		c := append([]schemas.ToolCall(nil), calls...)
		change(c)
		other, err := PendingDigest(c)
		require.NoError(t, err, name)
		assert.NotEqual(t, d, other, name)
	}
	dropped, err := PendingDigest(calls[:1])
	require.NoError(t, err)
	assert.NotEqual(t, d, dropped)

	empty, err := PendingDigest(nil)
	require.NoError(t, err)
	fromRaw, err = PendingDigestJSON([]byte(`[]`))
	require.NoError(t, err)
	assert.Equal(t, empty, fromRaw, "no calls is an empty array, never null")

	// What cannot be canonicalised cannot be signed for.
	_, err = PendingDigest([]schemas.ToolCall{{ID: "c", Name: "n", Arguments: json.RawMessage(`{"a":1,"a":2}`)}})
	require.ErrorIs(t, err, ErrMalformedDocument)
	for _, bad := range []string{`{"id":"c"}`, `null`, `"x"`, `[`, `[{"a":1,"a":2}]`} {
		_, err = PendingDigestJSON([]byte(bad))
		require.ErrorIs(t, err, ErrMalformedDocument, bad)
	}
}

// TestDecisionSignedExampleIsAMessage: the signed example is a decision
// the schema accepts, verifiable as published by jetpilot too.
func TestDecisionSignedExampleIsAMessage(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(signedExampleFile)
	require.NoError(t, err)
	d, err := schemas.DecodeDecision(raw)
	require.NoError(t, err)
	again, err := schemas.Encode(d)
	require.NoError(t, err)
	key, err := Verify(again)
	require.NoError(t, err, "re-encoded by jetpilot, the decision still verifies")
	assert.Equal(t, d.Signature.Key, key)
}

// BenchmarkVerifyDecision: the worker's cost per signed decision (target
// under 100 µs): canonicalisation, SHA-256, key decoding and ed25519.
func BenchmarkVerifyDecision(b *testing.B) {
	raw, err := os.ReadFile(signedExampleFile)
	require.NoError(b, err)
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Verify(raw); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPendingDigest: the approval request's digest of two calls.
func BenchmarkPendingDigest(b *testing.B) {
	calls := []schemas.ToolCall{
		{ID: "c1", Name: "stakpak__run_command", Arguments: json.RawMessage(`{"command":"kubectl -n prod rollout restart deploy/api","timeout":120}`), Rule: "prod"},
		{ID: "c2", Name: "stakpak__create_file", Arguments: json.RawMessage(`{"path":"/srv/app/NOTES.md","content":"` + strings.Repeat("x", 2000) + `"}`)},
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := PendingDigest(calls); err != nil {
			b.Fatal(err)
		}
	}
}
