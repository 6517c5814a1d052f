package schemas

import (
	"errors"
	"fmt"
)

// Job ids and profiles are defined here and nowhere else: what a job id and
// a profile may contain is part of the message contract (the id is the
// Nats-Msg-Id and the last tokens of the results, approvals, decisions and
// events subjects; the profile is the last token of the jobs subject), and
// package schemas owns the contract. The JSON Schemas state the same rules
// as patterns ("id" and "profile" of job.v1.json, "job_id" of
// decision.v1.json and approval.v1.json); TestIDRulesMatchSchemas holds them
// to these functions. Package queue, which turns ids into subjects, and
// every command that takes an id call these rather than keep a copy
// (schemas imports nothing of jetpilot, so everyone can).

// MaxProfileLen is the longest profile.
const MaxProfileLen = 64

// Allowed characters, as the error messages name them.
const (
	jobIDChars   = "A-Za-z0-9._:-"
	profileChars = "letters, digits, '_' or '-'"
)

// ValidJobID reports whether id is 1-128 characters of A-Za-z0-9._:-,
// which makes it safe as a NATS subject token and a Nats-Msg-Id. It does
// not allocate: the job fast path calls it.
func ValidJobID(id string) bool {
	return len(id) > 0 && len(id) <= MaxJobIDLen && badByte(id, true) < 0
}

// ValidProfile reports whether p is 1-64 characters of A-Za-z0-9_-: one
// NATS subject token that can also end a consumer name (no spaces, dots or
// wildcards). It does not allocate.
func ValidProfile(p string) bool {
	return len(p) > 0 && len(p) <= MaxProfileLen && badByte(p, false) < 0
}

// ValidateJobID is ValidJobID with the reason: for example
// `job id "a b": contains whitespace at byte 1; only A-Za-z0-9._:- are allowed`.
// Everything that puts a job id on a subject or in the KV store checks it
// first, so a bad id is a clear error, not a malformed subject.
func ValidateJobID(id string) error {
	if err := checkToken(id, MaxJobIDLen, true); err != nil {
		return fmt.Errorf("job id %q: %w", id, err)
	}
	return nil
}

// ValidateProfile is ValidProfile with the reason: for example
// `profile "gpu.big": contains a dot at byte 3; only letters, digits, '_' or '-' are allowed`.
func ValidateProfile(profile string) error {
	if err := checkToken(profile, MaxProfileLen, false); err != nil {
		return fmt.Errorf("profile %q: %w", profile, err)
	}
	return nil
}

// badByte is the index of the first byte of s that is not allowed (letters,
// digits, '_' and '-', and with jobID also '.' and ':'), or -1.
func badByte(s string, jobID bool) int {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '-':
		case jobID && (c == '.' || c == ':'):
		default:
			return i
		}
	}
	return -1
}

// CheckName checks that s is 1 to maxLen letters, digits, '_' or '-' (a
// profile's characters): one NATS subject token that can also be part of a
// stream, bucket or consumer name. The error says what is wrong, without
// naming s, for the caller to prefix.
func CheckName(s string, maxLen int) error { return checkToken(s, maxLen, false) }

func checkToken(s string, maxLen int, jobID bool) error {
	allowed := profileChars
	if jobID {
		allowed = jobIDChars
	}
	if s == "" {
		return errors.New("must not be empty")
	}
	if len(s) > maxLen {
		return fmt.Errorf("must be at most %d characters of %s (got %d)", maxLen, allowed, len(s))
	}
	i := badByte(s, jobID)
	if i < 0 {
		return nil
	}
	c := s[i]
	what := fmt.Sprintf("%q", c)
	switch c {
	case ' ', '\t', '\n', '\r':
		what = "whitespace"
	case '.':
		what = "a dot"
	case '*', '>':
		what = fmt.Sprintf("the wildcard %q", c)
	}
	return fmt.Errorf("contains %s at byte %d; only %s are allowed", what, i, allowed)
}

// MaxRequesterLen is the longest requested_by of a job.
const MaxRequesterLen = 128

// ValidRequester reports whether s is 1-128 characters of A-Za-z0-9._@-,
// a job's requested_by (job.v1.json states the same pattern). It does not
// allocate: the job fast path calls it.
func ValidRequester(s string) bool {
	if len(s) == 0 || len(s) > MaxRequesterLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '.', c == '_', c == '@', c == '-':
		default:
			return false
		}
	}
	return true
}

// Shapes of a Signature's members, as the schemas' patterns state them:
// an nkey user public key is "U" and 55 characters of base32 (A-Z2-7); an
// ed25519 signature is 64 bytes, 86 characters of base64url unpadded.
const (
	SignatureKeyLen = 56
	SignatureSigLen = 86
)

// ValidSignatureShape reports whether s looks like a signature the schemas
// accept: key ^U[A-Z2-7]{55}$ and sig ^[A-Za-z0-9_-]{86}$. It checks the
// form only; package signing checks the key's checksum and the signature.
func ValidSignatureShape(s Signature) bool {
	if len(s.Key) != SignatureKeyLen || s.Key[0] != 'U' || len(s.Sig) != SignatureSigLen {
		return false
	}
	for i := 1; i < len(s.Key); i++ {
		if c := s.Key[i]; !('A' <= c && c <= 'Z' || '2' <= c && c <= '7') {
			return false
		}
	}
	for i := 0; i < len(s.Sig); i++ {
		c := s.Sig[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// MaxKeyLen is the longest session_key or concurrency_key.
const MaxKeyLen = 128

// ValidSessionKey reports whether s is a valid session_key: 1-128
// characters of A-Za-z0-9_- (job.v1.json states the same pattern).
func ValidSessionKey(s string) bool { return validKey(s, false) }

// ValidConcurrencyKey reports whether s is a valid concurrency_key: 1-128
// characters of A-Za-z0-9_:- (job.v1.json states the same pattern).
func ValidConcurrencyKey(s string) bool { return validKey(s, true) }

func validKey(s string, colon bool) bool {
	if len(s) == 0 || len(s) > MaxKeyLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '-':
		case c == ':' && colon:
		default:
			return false
		}
	}
	return true
}
