package signing

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// go test ./signing -run TestVector -update rewrites the vector files from
// the inputs below. Ed25519 signatures are deterministic, so the files only
// change when the inputs do.
var update = flag.Bool("update", false, "rewrite schemas/examples/signing-vector.json and decision-signed.json")

const (
	vectorFile        = "../schemas/examples/signing-vector.json"
	signedExampleFile = "../schemas/examples/decision-signed.json"
	signedJobFile     = "../schemas/examples/job-signed.json"
)

// vectorJob is a producer's job, signed by the same TEST ONLY key into
// job-signed.json: the job scheme is the decision's.
const vectorJob = `{
  "id": "deploy-42",
  "prompt": "Roll out api v2.3.1 to prod and watch the error rate for 10 minutes.",
  "profile": "ops",
  "timeout": "30m",
  "pause_on_approval": true,
  "allowed_tools": ["view", "stakpak__run_command"],
  "overrides": {"max_turns": 32},
  "metadata": {"channel": "C042", "thread": "1712345678.000100"},
  "requested_by": "ci-bot@example.com"
}`

// vector is the layout of signing-vector.json.
type vector struct {
	Description string `json:"description"`
	// Seed is the TEST ONLY user seed: it is public, so its key must never
	// be trusted anywhere.
	SeedWarning string `json:"seed_warning"`
	Seed        string `json:"seed"`
	PublicKey   string `json:"public_key"`
	// Document is the unsigned decision, as a signer starts from it (not
	// canonical: member order, escapes and numbers as written).
	Document json.RawMessage `json:"document"`
	// Canonical is JCS(document without signature), as a string; its
	// UTF-8 bytes are what is hashed.
	Canonical string `json:"canonical"`
	// Digest is the lowercase hex SHA-256 of Canonical: the 32 bytes
	// ed25519 signs.
	Digest    string            `json:"digest"`
	Signature schemas.Signature `json:"signature"`
	// PendingToolCalls is the approval request's array, as published; the
	// document's pending_digest is PendingDigest of it.
	PendingToolCalls json.RawMessage `json:"pending_tool_calls"`
	PendingCanonical string          `json:"pending_canonical"`
	PendingDigest    string          `json:"pending_digest"`
}

// The vector's inputs. They exercise what a home-made canonicaliser gets
// wrong: member order by UTF-16 code units ("ﬁ" U+FB01 sorts after
// "😀" U+1F600, whose first code unit is 0xD83D), numbers written as
// ECMAScript writes them (120.0, 1E4, -0, 1e21, 0.000001), escapes
// (\u00fc, \/, \t) and characters JSON.stringify leaves alone (U+2028, <, &).
const (
	vectorSeedText = "jetpilot signing test vector: TEST ONLY, never trust this key"

	vectorPending = `[
  {
    "id": "toolu_01",
    "name": "stakpak__run_command",
    "arguments": {"command": "kubectl -n prod rollout restart deploy/api && echo \"done\" > /tmp/log", "timeout": 120.0, "max_output": 1E4},
    "rule": "prod-change"
  },
  {
    "id": "toolu_02",
    "name": "stakpak__create_file",
    "arguments": {"path": "\/srv\/app\/NOTES.md", "content": "Gr\u00fc\u00dfe\tfrom the agent \u2028 ✓ <b>&</b>", "mode": 420,
                  "meta": {"ﬁ": 1e21, "😀": 0.000001, "a": -0, "Z": [true, false, null]}},
    "rule": "prod-change"
  }
]`

	// vectorDocument has a %s for the pending digest.
	vectorDocument = `{
  "schema": "jetpilot.decision.v1",
  "approval_id": "deploy-42:1",
  "job_id": "deploy-42",
  "decisions": {
    "toolu_02": {"action": "reject", "content": "Not on a Friday \u2014 ask Zo\u00eb <sre@example.com> \ud83d\udeab"},
    "toolu_01": {"action": "accept"}
  },
  "decided_by": "Zoë Müller",
  "pending_digest": "%s",
  "decided_at": "2025-04-05T14:02:11Z"
}`
)

// vectorSeed is the TEST ONLY seed: a user seed from a fixed 32 bytes.
func vectorSeed(t testing.TB) []byte {
	t.Helper()
	raw := sha256.Sum256([]byte(vectorSeedText))
	kp, err := nkeys.FromRawSeed(nkeys.PrefixByteUser, raw[:])
	require.NoError(t, err)
	seed, err := kp.Seed()
	require.NoError(t, err)
	return seed
}

// writeVector computes the vector from its inputs and writes both files.
func writeVector(t *testing.T) {
	seed := vectorSeed(t)
	pub, err := PublicKey(seed)
	require.NoError(t, err)
	pendingCanon, err := Canonicalize([]byte(vectorPending))
	require.NoError(t, err)
	pendingDigest, err := PendingDigestJSON([]byte(vectorPending))
	require.NoError(t, err)
	doc := []byte(strings.Replace(vectorDocument, "%s", pendingDigest, 1))
	canon, err := CanonicalDocument(doc)
	require.NoError(t, err)
	digest, err := DocumentDigest(doc)
	require.NoError(t, err)
	sig, err := Sign(doc, seed)
	require.NoError(t, err)
	v := vector{
		Description: "A signed jetpilot decision, every step spelled out (DESIGN.md, Signed decisions): " +
			"canonical = JCS (RFC 8785) of document without signature; digest = SHA-256 of its UTF-8 bytes; " +
			"signature.sig = base64url (no padding) of the ed25519 signature of the 32 digest bytes by the key of seed; " +
			"pending_digest = hex SHA-256 of JCS(pending_tool_calls), and the document carries it. " +
			"decision-signed.json is document with this signature.",
		SeedWarning: "TEST ONLY: this seed is public. Never use it, or trust its public key, anywhere but in tests.",
		Seed:        string(seed), PublicKey: pub,
		Document: doc, Canonical: string(canon), Digest: hex.EncodeToString(digest[:]), Signature: sig,
		PendingToolCalls: json.RawMessage(vectorPending), PendingCanonical: string(pendingCanon), PendingDigest: pendingDigest,
	}
	require.NoError(t, os.WriteFile(vectorFile, encodeIndented(t, v), 0o644))
	require.NoError(t, os.WriteFile(signedExampleFile, encodeIndented(t, json.RawMessage(withSignature(t, doc, sig))), 0o644))
	jobSig, err := Sign([]byte(vectorJob), seed)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(signedJobFile, append(withSignature(t, []byte(vectorJob), jobSig), '\n'), 0o644))
}

// withSignature adds a signature member at the end of the object doc.
func withSignature(t testing.TB, doc []byte, sig schemas.Signature) []byte {
	t.Helper()
	member, err := json.Marshal(sig)
	require.NoError(t, err)
	end := bytes.LastIndexByte(doc, '}')
	require.Positive(t, end)
	out := append([]byte(nil), bytes.TrimRight(doc[:end], " \n\t")...)
	out = append(out, `,
  "signature": `...)
	out = append(out, member...)
	return append(out, "\n}"...)
}

// encodeIndented writes v as indented JSON, leaving <, > and & alone and
// raw JSON (the document) with its escapes and member order as written.
func encodeIndented(t testing.TB, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	require.NoError(t, enc.Encode(v))
	return b.Bytes()
}

func readVector(t testing.TB) vector {
	t.Helper()
	data, err := os.ReadFile(vectorFile)
	require.NoError(t, err)
	var v vector
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&v))
	return v
}

// TestVector recomputes every value of signing-vector.json from its seed,
// document and pending_tool_calls, and checks decision-signed.json.
func TestVector(t *testing.T) {
	if *update {
		writeVector(t)
	}
	v := readVector(t)

	// The seed and its key.
	assert.Contains(t, v.SeedWarning, "TEST ONLY")
	assert.Equal(t, string(vectorSeed(t)), v.Seed, "the seed comes from the fixed text")
	pub, err := PublicKey([]byte(v.Seed))
	require.NoError(t, err)
	assert.Equal(t, v.PublicKey, pub)
	assert.True(t, nkeys.IsValidPublicUserKey(v.PublicKey))

	// Pending calls: canonical form and digest, from the raw array and
	// from the Go values the worker holds.
	pendingCanon, err := Canonicalize(v.PendingToolCalls)
	require.NoError(t, err)
	assert.Equal(t, v.PendingCanonical, string(pendingCanon))
	sum := sha256.Sum256([]byte(v.PendingCanonical))
	assert.Equal(t, v.PendingDigest, hex.EncodeToString(sum[:]))
	pd, err := PendingDigestJSON(v.PendingToolCalls)
	require.NoError(t, err)
	assert.Equal(t, v.PendingDigest, pd)
	var calls []schemas.ToolCall
	require.NoError(t, json.Unmarshal(v.PendingToolCalls, &calls))
	pd, err = PendingDigest(calls)
	require.NoError(t, err)
	assert.Equal(t, v.PendingDigest, pd, "the digest of the decoded calls, as a worker computes it")

	// The document: it is a valid decision bound to the pending calls.
	d, err := schemas.DecodeDecision(v.Document)
	require.NoError(t, err)
	assert.Equal(t, v.PendingDigest, d.PendingDigest)
	assert.Nil(t, d.Signature)

	// Canonical bytes, digest, signature.
	canon, err := CanonicalDocument(v.Document)
	require.NoError(t, err)
	assert.Equal(t, v.Canonical, string(canon))
	digest, err := DocumentDigest(v.Document)
	require.NoError(t, err)
	assert.Equal(t, v.Digest, hex.EncodeToString(digest[:]))
	sum = sha256.Sum256([]byte(v.Canonical))
	assert.Equal(t, v.Digest, hex.EncodeToString(sum[:]))
	sig, err := Sign(v.Document, []byte(v.Seed))
	require.NoError(t, err)
	assert.Equal(t, v.Signature, sig, "ed25519 signatures are deterministic")
	assert.Equal(t, v.PublicKey, v.Signature.Key)

	// decision-signed.json is the document with that signature, and
	// verifies; the Go value signs to the same signature.
	signed, err := os.ReadFile(signedExampleFile)
	require.NoError(t, err)
	key, err := Verify(signed)
	require.NoError(t, err)
	assert.Equal(t, v.PublicKey, key)
	sd, err := schemas.DecodeDecision(signed)
	require.NoError(t, err)
	require.NotNil(t, sd.Signature)
	assert.Equal(t, v.Signature, *sd.Signature)
	sd.Signature = nil
	assert.Equal(t, d, sd, "decision-signed.json is the document plus its signature")
	require.NoError(t, SignDecision(&sd, []byte(v.Seed)))
	assert.Equal(t, v.Signature, *sd.Signature, "signing the decoded value gives the same signature")
	withSig := withSignature(t, v.Document, v.Signature)
	key, err = Verify(withSig)
	require.NoError(t, err)
	assert.Equal(t, v.PublicKey, key)

	// job-signed.json: the same key signed a job.
	job, err := os.ReadFile(signedJobFile)
	require.NoError(t, err)
	key, err = Verify(job)
	require.NoError(t, err)
	assert.Equal(t, v.PublicKey, key)
	j, err := schemas.DecodeJob(job)
	require.NoError(t, err)
	assert.Equal(t, "ci-bot@example.com", j.RequestedBy)
	require.NotNil(t, j.Signature)
	assert.Equal(t, v.PublicKey, j.Signature.Key)
}
