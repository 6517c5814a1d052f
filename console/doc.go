// Package console is jetpilot's web console for people: jobs by state, a
// job's live events and result, an approvals inbox, dead letters with
// requeue, the workers and what they hold, and the policy in force
// (DESIGN.md "Console"; `jetpilot console` and `jetpilot dev` serve it).
//
// Pages are rendered on the server with html/template, so every text an
// agent or a publisher wrote (prompts, output, tool arguments, metadata) is
// escaped by the template engine; the little JavaScript there is comes from
// embedded files only, under a Content-Security-Policy that allows no
// inline script. Pages stay live over server-sent events fed by JetStream
// (a watch of the runs bucket, ordered consumers on a job's events,
// results and approvals, a core subscription on the jobs subjects), never
// by polling; every stream ends with its request.
//
// Signing: the console holds no approver seeds. Under `decisions: signed`
// the approver's browser signs the decision (static/sign.js: RFC 8785 JCS,
// SHA-256 from Web Crypto, ed25519 from the vendored tweetnacl-js), with a
// seed pasted into the page that is never sent; the server checks the
// signature with signing.Verify and that the key is the signed-in
// approver's before it publishes the decision as is.
//
// What the console knows about jobs comes through the Jobs interface; the
// default, NewIndex, keeps a bounded summary of every run record from one
// watch of the runs bucket (an ordered consumer, last value per key), so no
// page view reads the bucket key by key (DESIGN.md explains the cost), and
// lists queued jobs from the JOBS stream's subject counts and by-subject
// message gets (JOBS is a work queue: no second consumer may read it).
package console
