// jetpilot console: the approvals inbox. Builds decisions and, when the
// policy wants them signed, signs them here in the browser (DESIGN.md
// "Signed decisions"): the signed message is the 32 raw bytes of
// SHA-256(JCS(decision without "signature")), signed with ed25519
// (tweetnacl-js, vendored as nacl-fast.min.js) by the approver's nkey seed,
// which is kept in this page's memory only and never sent.
"use strict";
(function () {
  const enc = new TextEncoder();

  // RFC 8785 (JCS) for values from JSON.parse: members sorted by UTF-16
  // code units (what Array.prototype.sort compares), strings and numbers
  // as ECMAScript's JSON.stringify writes them.
  function jcs(v) {
    if (v === null || typeof v === "boolean" || typeof v === "string") return JSON.stringify(v);
    if (typeof v === "number") {
      if (!Number.isFinite(v)) throw new Error("JCS: a number is not finite");
      return JSON.stringify(v);
    }
    if (Array.isArray(v)) return "[" + v.map(jcs).join(",") + "]";
    if (typeof v === "object") {
      return "{" + Object.keys(v).filter((k) => v[k] !== undefined).sort()
        .map((k) => JSON.stringify(k) + ":" + jcs(v[k])).join(",") + "}";
    }
    throw new Error("JCS: cannot canonicalise a " + typeof v);
  }

  async function sha256(bytes) {
    if (!window.crypto || !crypto.subtle) throw new Error("signing needs a secure page (HTTPS, or localhost)");
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }
  const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  function base64url(b) {
    let s = "";
    b.forEach((x) => { s += String.fromCharCode(x); });
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  // nkeys: base32 (RFC 4648, no padding) of prefix bytes, the key and a
  // CRC-16/XMODEM, little-endian.
  const B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  function b32decode(s) {
    const out = [];
    let bits = 0, value = 0;
    for (const c of s) {
      const i = B32.indexOf(c);
      if (i < 0) throw new Error("not an nkey: bad character");
      value = (value << 5) | i; bits += 5;
      if (bits >= 8) { out.push((value >>> (bits - 8)) & 255); bits -= 8; }
    }
    return new Uint8Array(out);
  }
  function b32encode(b) {
    let out = "", bits = 0, value = 0;
    for (const x of b) {
      value = (value << 8) | x; bits += 8;
      while (bits >= 5) { out += B32[(value >>> (bits - 5)) & 31]; bits -= 5; }
    }
    if (bits > 0) out += B32[(value << (5 - bits)) & 31];
    return out;
  }
  function crc16(b) {
    let crc = 0;
    for (const x of b) {
      crc ^= x << 8;
      for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    }
    return crc;
  }
  const PREFIX_SEED = 18 << 3, PREFIX_USER = 20 << 3;
  // keyFromSeed opens an nkey user seed ("SU...") as an ed25519 key pair
  // and its public key ("U...").
  function keyFromSeed(text) {
    const raw = b32decode(text.trim());
    if (raw.length !== 36) throw new Error("not an nkey user seed: wrong length");
    const body = raw.subarray(0, 34);
    if (crc16(body) !== (raw[34] | (raw[35] << 8))) throw new Error("not an nkey seed: checksum mismatch");
    if ((raw[0] & 0xf8) !== PREFIX_SEED) throw new Error("not an nkey seed");
    const kind = ((raw[0] & 7) << 5) | ((raw[1] & 0xf8) >> 3);
    if (kind !== PREFIX_USER) throw new Error("an nkey seed, but not a user seed (SU...)");
    const kp = nacl.sign.keyPair.fromSeed(raw.slice(2, 34));
    const pub = new Uint8Array(35);
    pub[0] = PREFIX_USER; pub.set(kp.publicKey, 1);
    const c = crc16(pub.subarray(0, 33));
    pub[33] = c & 255; pub[34] = c >> 8;
    return { secretKey: kp.secretKey, publicKey: b32encode(pub) };
  }

  // signDocument returns doc with its "signature" member set.
  async function signDocument(doc, key) {
    const unsigned = Object.assign({}, doc);
    delete unsigned.signature;
    const digest = await sha256(enc.encode(jcs(unsigned)));
    const sig = nacl.sign.detached(digest, key.secretKey);
    return Object.assign(unsigned, { signature: { key: key.publicKey, sig: base64url(sig) } });
  }
  async function pendingDigest(calls) { return hex(await sha256(enc.encode(jcs(calls)))); }

  // For tests and for anyone checking this signer against the vector in
  // schemas/examples/signing-vector.json.
  window.jetpilotSign = {
    jcs, pendingDigest,
    sign: async (doc, seed) => signDocument(doc, keyFromSeed(seed)),
    publicKey: (seed) => keyFromSeed(seed).publicKey,
  };

  const panel = document.getElementById("key-panel");
  if (!panel) return;
  const signedPolicy = panel.dataset.signed === "true";
  const myKey = panel.dataset.myKey || "";
  const approver = panel.dataset.approver || "";
  const csrf = document.body.dataset.csrf;
  let key = null;
  const status = document.getElementById("key-status");
  function load(text) {
    try {
      const k = keyFromSeed(text);
      if (myKey && k.publicKey !== myKey) throw new Error("this seed's key " + k.publicKey + " is not yours in the policy (" + myKey + ")");
      key = k;
      status.textContent = "key loaded: " + k.publicKey;
      status.className = "status-line ok";
    } catch (e) {
      key = null;
      status.textContent = e.message;
      status.className = "status-line error";
    }
  }
  const seedInput = document.getElementById("seed");
  if (seedInput) seedInput.addEventListener("change", () => { load(seedInput.value); seedInput.value = ""; });
  const seedFile = document.getElementById("seed-file");
  if (seedFile) seedFile.addEventListener("change", async () => {
    const f = seedFile.files && seedFile.files[0];
    if (f) load((await f.text()).split(/\s+/).find((w) => w.startsWith("SU")) || "");
    seedFile.value = "";
  });

  async function decide(card, how) {
    const out = card.querySelector(".outcome");
    out.textContent = "…";
    out.className = "outcome";
    try {
      const approvalID = card.dataset.approval, jobID = card.dataset.job;
      const calls = JSON.parse(card.dataset.pending);
      const doc = { approval_id: approvalID, job_id: jobID };
      const why = (card.querySelector(".reason-all").value || "").trim();
      if (how === "allow") doc.all = "allow";
      else if (how === "deny" && !why) doc.all = "deny";
      else {
        doc.decisions = {};
        for (const c of calls) {
          const act = how === "deny" ? "reject" : document.getElementById("act-" + approvalID + "-" + c.id).value;
          const reason = how === "deny" ? why : (document.getElementById("why-" + approvalID + "-" + c.id).value || "").trim();
          doc.decisions[c.id] = act === "reject" && reason ? { action: "reject", content: reason } : { action: act };
        }
      }
      if (card.dataset.signed === "true" || signedPolicy) {
        if (!key) throw new Error("load your signing key first");
        const digest = await pendingDigest(calls);
        if (digest !== card.dataset.digest) throw new Error("the calls shown are not the calls pending (digest mismatch): reload");
        doc.pending_digest = digest;
        if (approver) doc.decided_by = approver;
        doc.decided_at = new Date().toISOString().replace(/\.\d+Z$/, "Z");
        Object.assign(doc, await signDocument(doc, key));
      }
      const r = await fetch("/approvals/decide", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(doc),
      });
      let msg = "";
      try { msg = (await r.json()).message; } catch (_) { msg = r.status + " " + r.statusText; }
      out.textContent = msg;
      out.className = "outcome " + (r.ok ? "ok" : "error");
    } catch (e) {
      out.textContent = e.message;
      out.className = "outcome error";
    }
  }
  document.addEventListener("click", (e) => {
    const b = e.target.closest("button[data-do]");
    const card = b && b.closest(".approval-card");
    if (card) decide(card, b.dataset.do);
  });
})();
