package signing

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nkeys"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// The errors of Verify (and of Sign and the digests, for a bad document),
// each returned wrapped with what exactly is wrong: test with errors.Is.
// They are distinct so a worker can say why it refused a decision: nothing
// signed it (ErrNoSignature), its signature is not even of the right form
// (ErrMalformedSignature), or the key did not sign this document
// (ErrBadSignature).
var (
	// ErrNoSignature: the document has no top-level "signature" member.
	ErrNoSignature = errors.New("no signature")
	// ErrMalformedSignature: the signature member is not {"key": a user
	// public key, "sig": 64 bytes in base64url without padding}.
	ErrMalformedSignature = errors.New("malformed signature")
	// ErrBadSignature: the signature does not verify: the document was
	// changed after signing, or another key signed it.
	ErrBadSignature = errors.New("bad signature")
	// ErrMalformedDocument: the document is not a JSON object that JCS can
	// canonicalise (invalid JSON, duplicate member names, ...).
	ErrMalformedDocument = errors.New("malformed document")
	// ErrBadSeed: the seed given to sign with is not an nkey user seed.
	ErrBadSeed = errors.New("not an nkey user seed")
)

// sigEncoding is base64url without padding, strict: padding, the standard
// alphabet's + and /, white space and non-zero trailing bits are all
// refused, so each signature has exactly one text.
var sigEncoding = base64.RawURLEncoding.Strict()

// Sign signs raw, a JSON object, with seed, an nkey user seed ("SU..."):
// an ed25519 signature over DocumentDigest(raw). A "signature" member
// already in raw is ignored (not signed). The caller sets the result as the
// document's "signature"; SignDecision and SignJob do it for Go values.
func Sign(raw []byte, seed []byte) (schemas.Signature, error) {
	kp, pub, err := userKeyPair(seed)
	if err != nil {
		return schemas.Signature{}, err
	}
	defer kp.Wipe()
	digest, err := DocumentDigest(raw)
	if err != nil {
		return schemas.Signature{}, fmt.Errorf("sign: %w", err)
	}
	sig, err := kp.Sign(digest[:])
	if err != nil {
		return schemas.Signature{}, fmt.Errorf("sign: %w", err)
	}
	return schemas.Signature{Key: pub, Sig: sigEncoding.EncodeToString(sig)}, nil
}

// userKeyPair opens seed as a user key pair and returns it with its
// public key. The error never contains the seed.
func userKeyPair(seed []byte) (nkeys.KeyPair, string, error) {
	prefix, _, err := nkeys.DecodeSeed(seed)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrBadSeed, err)
	}
	if prefix != nkeys.PrefixByteUser {
		return nil, "", fmt.Errorf("%w: it is an nkey seed of type %s (a user seed starts with SU)", ErrBadSeed, prefix)
	}
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrBadSeed, err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		kp.Wipe()
		return nil, "", fmt.Errorf("%w: %v", ErrBadSeed, err)
	}
	return kp, pub, nil
}

// PublicKey returns the public key ("U...") of an nkey user seed.
func PublicKey(seed []byte) (string, error) {
	kp, pub, err := userKeyPair(seed)
	if err != nil {
		return "", err
	}
	kp.Wipe()
	return pub, nil
}

// NewSeed makes a new nkey user key and returns its seed and public key.
func NewSeed() (seed []byte, publicKey string, err error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, "", fmt.Errorf("create key: %w", err)
	}
	defer kp.Wipe()
	s, err := kp.Seed()
	if err != nil {
		return nil, "", fmt.Errorf("create key: %w", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, "", fmt.Errorf("create key: %w", err)
	}
	return append([]byte(nil), s...), pub, nil
}

// Verify checks the signature of raw, a JSON object as received, and
// returns the public key that signed it. It checks that:
//   - raw is a JSON object JCS accepts (no duplicate member names, valid
//     UTF-8, ...), else ErrMalformedDocument;
//   - it has a top-level "signature", else ErrNoSignature;
//   - that is exactly {"key", "sig"}, key a valid nkey user public key
//     (nkeys.IsValidPublicUserKey: "U...", checksum included) and sig 64
//     bytes in base64url without padding, else ErrMalformedSignature;
//   - sig is key's ed25519 signature of DocumentDigest(raw), else
//     ErrBadSignature.
//
// It does not say whether the key may sign: compare it with the policy.
func Verify(raw []byte) (publicKey string, err error) {
	doc, member, err := splitSignature(raw)
	if err != nil {
		return "", err
	}
	if member == nil {
		return "", fmt.Errorf("%w: the document has no %q member", ErrNoSignature, SignatureMember)
	}
	key, sig, err := parseSignature(member)
	if err != nil {
		return "", err
	}
	pub, err := nkeys.Decode(nkeys.PrefixByteUser, []byte(key))
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return "", fmt.Errorf("%w: key is not a valid nkey user public key", ErrMalformedSignature)
	}
	digest := sha256.Sum256(doc)
	if !ed25519.Verify(ed25519.PublicKey(pub), digest[:], sig) {
		return "", fmt.Errorf("%w: the signature by %s does not match the document (changed after signing, or signed by another key)", ErrBadSignature, key)
	}
	return key, nil
}

// parseSignature reads the canonical value of a signature member.
func parseSignature(member []byte) (key string, sig []byte, err error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(member, &m); err != nil || m == nil {
		return "", nil, fmt.Errorf("%w: want an object {\"key\": ..., \"sig\": ...}", ErrMalformedSignature)
	}
	for name := range m {
		if name != "key" && name != "sig" {
			return "", nil, fmt.Errorf("%w: unknown member %q (want only key and sig)", ErrMalformedSignature, name)
		}
	}
	rawKey, okKey := m["key"]
	rawSig, okSig := m["sig"]
	if !okKey || !okSig {
		return "", nil, fmt.Errorf("%w: want both key and sig", ErrMalformedSignature)
	}
	var sigText string
	if json.Unmarshal(rawKey, &key) != nil || json.Unmarshal(rawSig, &sigText) != nil {
		return "", nil, fmt.Errorf("%w: key and sig must be strings", ErrMalformedSignature)
	}
	if !nkeys.IsValidPublicUserKey(key) {
		what := "not a valid nkey user public key"
		if strings.HasPrefix(key, "S") {
			what = "a seed, not a public key: the seed is secret, never put it in a message"
		} else if nkeys.IsValidPublicKey(key) {
			what = "an nkey public key but not a user key (U...)"
		}
		return "", nil, fmt.Errorf("%w: key %.60q is %s", ErrMalformedSignature, redactSeed(key), what)
	}
	sig, err = sigEncoding.DecodeString(sigText)
	if err != nil {
		return "", nil, fmt.Errorf("%w: sig is not base64url without padding: %v", ErrMalformedSignature, err)
	}
	if len(sig) != ed25519.SignatureSize {
		return "", nil, fmt.Errorf("%w: sig is %d bytes, an ed25519 signature is %d", ErrMalformedSignature, len(sig), ed25519.SignatureSize)
	}
	return key, sig, nil
}

// redactSeed keeps a seed someone put in a message out of errors and logs.
func redactSeed(key string) string {
	if strings.HasPrefix(key, "S") {
		return "S…(redacted)"
	}
	return key
}
