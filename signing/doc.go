// Package signing makes and checks the signatures of jetpilot messages: an
// approver's signature on a decision, and a producer's on a job.
//
// Why signatures: anyone who may publish on jetpilot.decisions.* could
// otherwise approve any tool call, and decided_by is only what the publisher
// says. With signed decisions a worker applies a decision only when it
// carries a valid signature by a key the policy lists, over the very calls
// that are pending (pending_digest), so a NATS permission is not enough to
// approve, and a decision cannot be replayed onto other calls.
//
// The scheme, fixed by DESIGN.md ("Signed decisions") because programs in
// other languages sign too:
//
//   - A key is an NATS nkey user key: the seed "SU..." stays with the
//     approver, the public key "U..." goes into the policy. nkeys are
//     ed25519 keys with a type prefix and a checksum, which the NATS tooling
//     already makes, stores and reads (github.com/nats-io/nkeys, nkeys.js).
//   - The signed message is the 32 raw bytes of
//     SHA-256(JCS(document without its top-level "signature" member)),
//     JCS being the JSON Canonicalization Scheme of RFC 8785. Canonical
//     JSON lets the signer and the checker disagree on whitespace, member
//     order and escapes (a Go encoder and a JavaScript one never agree on
//     those) and still hash the same bytes; hashing first keeps what
//     ed25519 signs small and fixed.
//   - The signature is {"key": "U...", "sig": "<ed25519 signature,
//     base64url without padding>"}, set as the document's "signature".
//   - pending_digest is the lowercase hex SHA-256 of JCS(pending_tool_calls
//     as the approval request publishes them).
//
// schemas/examples/signing-vector.json is a worked example of every value
// (seed, document, canonical bytes, digest, signature, pending digest); its
// test here recomputes them, and examples/js/sign-decision.mjs does the same
// in JavaScript, so any other signer can be checked against it.
//
// JCS comes from github.com/gowebpki/jcs, a maintained fork (made with his
// permission) of the Go reference implementation by Anders Rundgren, an
// author of RFC 8785. It formats numbers as ECMAScript does, sorts members
// by UTF-16 code units, and rejects duplicate member names, invalid UTF-8
// and lone surrogates.
// Canonicalisation is subtle (number formatting above all) and a signer in
// another language will use its own RFC 8785 library, so a maintained
// implementation that follows the reference beats a hand-written one.
//
// Verify checks a document's signature against the document's raw bytes as
// received. Check those bytes, not a value decoded and encoded again: a
// re-encoding may change what is signed (a time written with other
// precision, a member this version does not know). Verify says that the
// key signed the document; whether that key may decide, and whether the
// digest matches what is pending, is the worker's policy.
package signing
