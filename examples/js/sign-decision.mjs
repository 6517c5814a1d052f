// Signs a jetpilot decision in JavaScript, the way DESIGN.md ("Signed
// decisions") fixes it, and checks every value against the test vector:
//
//   node sign-decision.mjs ../../schemas/examples/signing-vector.json
//
// It exits 0 when this signer agrees with jetpilot's to the byte, 1 when
// any value differs, 2 on bad usage. Use it as a template for a chat bot or
// a web console that signs decisions itself:
//
//   canonical     = JCS (RFC 8785) of the decision without "signature"
//   digest        = SHA-256 of the UTF-8 bytes of canonical (32 raw bytes)
//   signature.sig = base64url, without padding, of ed25519(seed, digest)
//   signature.key = the seed's public key ("U...")
//   pending_digest = lowercase hex SHA-256 of JCS(pending_tool_calls as the
//                    approval request publishes them); the decision carries it
//
// The vector's seed is TEST ONLY: it is public. A real approver's seed comes
// from `jetpilot keys new` and never leaves its owner.

import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import canonicalize from "canonicalize";
import nkeys from "nkeys.js";

const { fromSeed, fromPublic } = nkeys;

const file = process.argv[2];
if (!file) {
  console.error("usage: node sign-decision.mjs SIGNING-VECTOR.json");
  process.exit(2);
}
const vector = JSON.parse(readFileSync(file, "utf8"));

const utf8 = (s) => new TextEncoder().encode(s);
const sha256 = (bytes) => createHash("sha256").update(bytes).digest();

/** signDecision returns the decision with its signature member set. */
function signDecision(decision, seed) {
  const unsigned = { ...decision };
  delete unsigned.signature;
  const canonical = canonicalize(unsigned);
  const digest = sha256(utf8(canonical));
  const kp = fromSeed(utf8(seed));
  try {
    const sig = Buffer.from(kp.sign(digest)).toString("base64url");
    return { canonical, digest, signed: { ...unsigned, signature: { key: kp.getPublicKey(), sig } } };
  } finally {
    kp.clear();
  }
}

/** pendingDigest is the approval request's pending_digest of its calls. */
function pendingDigest(pendingToolCalls) {
  const canonical = canonicalize(pendingToolCalls);
  return { canonical, digest: sha256(utf8(canonical)).toString("hex") };
}

let failures = 0;
function check(name, got, want) {
  const ok = got === want;
  if (!ok) failures++;
  console.log(`${ok ? "ok      " : "MISMATCH"} ${name}: ${got}`);
  if (!ok) console.log(`         want: ${want}`);
}

const pending = pendingDigest(vector.pending_tool_calls);
check("pending_canonical", pending.canonical, vector.pending_canonical);
check("pending_digest", pending.digest, vector.pending_digest);
check("document pending_digest", vector.document.pending_digest, pending.digest);

const { canonical, digest, signed } = signDecision(vector.document, vector.seed);
check("public_key", signed.signature.key, vector.public_key);
check("canonical", canonical, vector.canonical);
check("digest", digest.toString("hex"), vector.digest);
check("signature.key", signed.signature.key, vector.signature.key);
check("signature.sig", signed.signature.sig, vector.signature.sig);

// A verifier's side: the vector's signature checks out with its key alone.
const verifier = fromPublic(vector.signature.key);
const verified = verifier.verify(digest, Buffer.from(vector.signature.sig, "base64url"));
check("signature verifies", String(verified), "true");

if (failures > 0) {
  console.error(`${failures} value(s) differ from ${file}`);
  process.exit(1);
}
console.log(`all values match ${file}`);
