package console_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/jetpilot-dev/jetpilot/console"
	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/signing"
	"github.com/jetpilot-dev/jetpilot/spawn"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// waitFor bounds each wait on the browser or the fleet; generous for -race
// on 2 cores.
const waitFor = 45 * time.Second

// ScreenshotsEnv names the folder the browser tests write their
// screenshots to; default console/testdata/screenshots (ignored by git).
const ScreenshotsEnv = "JETPILOT_CONSOLE_SCREENSHOTS"

// chromium finds the browser by path. It fails, never skips: CI installs
// Debian's chromium (.ci/run), and a developer must too.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no Chromium found (chromium, chromium-browser or google-chrome on PATH): apt-get install -y chromium")
	return ""
}

func screenshotDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv(ScreenshotsEnv)
	if dir == "" {
		dir = filepath.Join("testdata", "screenshots")
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	return dir
}

// approver is a test approver key; the seed stays in the test and the
// browser page.
type approver struct {
	name, key string
	seed      []byte
}

func newApprover(t *testing.T, name string) approver {
	t.Helper()
	seed, key, err := signing.NewSeed()
	require.NoError(t, err)
	return approver{name: name, key: key, seed: seed}
}

// fleet is one JetStream server, the simulator, a stored signed policy, a
// console, and a worker started on demand.
type fleet struct {
	t      *testing.T
	js     jetstream.JetStream
	qcfg   queue.Config
	simURL string
	pol    *policy.Policy
	client *queue.Client
	url    string
	alice  approver
}

const signedPolicy = `
version: 1
decisions: signed
tools:
  default: deny
  rules:
    - {name: read-only, match: {tools: [view]}, action: allow}
    - {name: prod-change, match: {tools: [run_command]}, action: approve, approvers: {groups: [sre], quorum: %d}}
approvers:
  alice: {key: %s, groups: [sre]}
  bob: {key: %s, groups: [sre]}
`

func newFleet(t *testing.T) *fleet {
	t.Helper()
	return newFleetQuorum(t, 1)
}

// newFleetQuorum is newFleet with run_command calls needing quorum sre
// approvers.
func newFleetQuorum(t *testing.T, quorum int) *fleet {
	t.Helper()
	_, _, js := testnats.Start(t)
	_, simURL := agentsimtest.New(t, agentsim.Options{})
	qcfg := queue.Config{}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, queue.Setup(ctx, js, qcfg))
	f := &fleet{t: t, js: js, qcfg: qcfg, simURL: simURL, client: queue.NewClient(js, qcfg), alice: newApprover(t, "alice")}
	bob := newApprover(t, "bob")
	store, err := queue.NewPolicyStore(ctx, js, qcfg)
	require.NoError(t, err)
	_, err = store.Set(ctx, []byte(fmt.Sprintf(signedPolicy, quorum, f.alice.key, bob.key)))
	require.NoError(t, err)
	f.pol, err = store.Get(ctx)
	require.NoError(t, err)

	hash := func(pw string) string {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		require.NoError(t, err)
		return string(h)
	}
	users, err := console.ParseUsers([]byte(fmt.Sprintf(`users:
  - {name: alice, password_hash: %q, role: approver}
  - {name: victor, password_hash: %q, role: viewer}
`, hash("alice-pw"), hash("victor-pw"))))
	require.NoError(t, err)
	srv, err := console.New(ctx, console.Config{JS: js, Queue: qcfg, Auth: console.Auth{Users: users},
		Logger: testsupport.Logger(t, 0)})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f.url = "http://" + ln.Addr().String()
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, ln) }()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-done:
			assert.NoError(t, err, "console Serve")
		case <-time.After(waitFor):
			t.Error("console did not stop")
		}
	})
	return f
}

// pausedDeploy submits job id, one kubectl apply call that the policy
// leaves to a human, and returns its approval request.
func (f *fleet) pausedDeploy(id string) schemas.ApprovalRequest {
	t := f.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err := f.client.Submit(ctx, schemas.Job{ID: id, Prompt: "#sim tool stakpak__run_command {\"command\":\"kubectl apply\"}\n#sim text done"})
	require.NoError(t, err)
	var req schemas.ApprovalRequest
	errFound := errors.New("found")
	require.ErrorIs(t, f.client.Approvals(ctx, true, func(a schemas.ApprovalRequest) error {
		if a.JobID != id {
			return nil
		}
		req = a
		return errFound
	}), errFound, "job %s pauses", id)
	return req
}

// startWorker runs one worker under the stored policy until the test ends.
func (f *fleet) startWorker() {
	t := f.t
	t.Helper()
	log := testsupport.Logger(t, 0)
	client, err := spawn.NewClient(spawn.ClientOptions{BaseURL: f.simURL, DirectEventStreams: true})
	require.NoError(t, err)
	runner := spawn.NewRunner(client, spawn.RunnerOptions{Worker: "w1", Logger: log})
	ctx, cancel := context.WithCancel(context.Background())
	w, err := worker.New(ctx, f.js, f.qcfg, runner, worker.Options{Name: "w1", Fallback: f.pol, Logger: log,
		RetryInitial: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, FetchWait: time.Second})
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = w.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(waitFor):
			t.Error("worker did not stop")
		}
	})
}

// browser starts headless Chromium for the test and returns a tab.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox, // root in CI containers
		chromedp.DisableGPU,
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelTab(); cancelAlloc() })
	require.NoError(t, chromedp.Do(ctx), "start Chromium")
	return ctx
}

// do runs browser steps with a deadline.
func do(t *testing.T, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, waitFor)
	defer cancel()
	require.NoError(t, chromedp.Do(sctx, steps...))
}

// eval evaluates a JavaScript expression (awaiting a promise) in the page.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, waitFor)
	defer cancel()
	v, err := chromedp.Run(sctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	require.NoError(t, err, "evaluate %s", expr)
	return v
}

// waitJS waits until a JavaScript predicate holds in the page.
func waitJS(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, waitFor+5*time.Second)
	defer cancel()
	_, err := chromedp.Run(sctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(waitFor), chromedp.WithPollingInterval(50*time.Millisecond)))
	require.NoError(t, err, "wait for %s (%s)", what, expr)
}

func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, waitFor)
	defer cancel()
	png, err := chromedp.Run(sctx, chromedp.CaptureScreenshot())
	require.NoError(t, err)
	path := filepath.Join(screenshotDir(t), name+".png")
	require.NoError(t, os.WriteFile(path, png, 0o644))
	t.Logf("screenshot %s", path)
}

func signIn(t *testing.T, ctx context.Context, base, user, password string) {
	t.Helper()
	do(t, ctx,
		chromedp.Navigate(base+"/login"),
		chromedp.WaitVisible(chromedp.CSS("#user")),
		chromedp.SendKeys(chromedp.CSS("#user"), user),
		chromedp.SendKeys(chromedp.CSS("#password"), password),
		chromedp.Click(chromedp.CSS("#signin")),
		chromedp.WaitVisible(chromedp.CSS("#whoami")),
	)
}

// hostile is agent- and publisher-controlled text that would run script if
// a page put it into HTML unescaped.
const hostile = `<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">`

// noScriptRan checks that nothing hostile executed on the page.
func noScriptRan(t *testing.T, ctx context.Context) {
	t.Helper()
	assert.Equal(t, "undefined", eval[string](t, ctx, `typeof window.__pwned`), "hostile text ran as script on %s", eval[string](t, ctx, `location.pathname`))
}

// TestBrowserApprovalFlow follows one job through the console in a real
// browser: it appears queued, goes running, pauses on a call the signed
// policy leaves to sre, is approved in the inbox with a decision signed in
// the browser by the approver's key, and completes. Agent and publisher
// text with markup stays text throughout.
func TestBrowserApprovalFlow(t *testing.T) {
	f := newFleet(t)
	ctx := browser(t)
	signIn(t, ctx, f.url, "alice", "alice-pw")

	// Queued: no worker runs yet. The jobs page is live (SSE), so the job
	// shows up without a reload.
	do(t, ctx, chromedp.Navigate(f.url+"/jobs"), chromedp.WaitVisible(chromedp.CSS("table.jobs")))
	const id = "browser-1"
	args, err := json.Marshal(map[string]string{"command": "kubectl rollout restart deploy/api </pre>" + hostile})
	require.NoError(t, err)
	prompt := "Restart the API " + hostile + "\n#sim text Looking " + hostile + "\\n\n#sim sleep 5s\n" +
		"#sim tool stakpak__run_command " + string(args) + "\n#sim text Restarted: " + hostile + " done."
	ctxSub, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err = f.client.Submit(ctxSub, schemas.Job{ID: id, Prompt: prompt, Metadata: map[string]string{"channel": hostile}})
	require.NoError(t, err)
	row := `document.querySelector('tr[data-job="` + id + `"]')`
	waitJS(t, ctx, "the job listed as queued", row+` && `+row+`.querySelector('.state').textContent === 'queued'`)
	assert.Contains(t, eval[string](t, ctx, row+`.textContent`), hostile, "the prompt and metadata show as text")
	noScriptRan(t, ctx)
	screenshot(t, ctx, "1-jobs-queued")

	f.startWorker()
	waitJS(t, ctx, "the job running", row+` && `+row+`.querySelector('.state').textContent === 'running'`)
	screenshot(t, ctx, "2-jobs-running")
	waitJS(t, ctx, "the job paused", row+` && `+row+`.querySelector('.state').textContent === 'paused'`)
	noScriptRan(t, ctx)

	// The inbox: who may approve and who has, and the call with its
	// arguments as text.
	do(t, ctx, chromedp.Navigate(f.url+"/approvals"), chromedp.WaitVisible(chromedp.CSS(".approval-card")))
	card := `document.querySelector('.approval-card[data-job="` + id + `"]')`
	waitJS(t, ctx, "the approval card", card+` !== null`)
	text := eval[string](t, ctx, card+`.textContent`)
	assert.Contains(t, text, "alice")
	assert.Contains(t, text, "nobody yet")
	assert.Contains(t, text, "still needed: 1")
	assert.Contains(t, eval[string](t, ctx, card+`.querySelector('pre.args').textContent`), `</pre><script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">`,
		"the arguments show as the JSON the agent wrote")
	noScriptRan(t, ctx)

	// A signed decision needs a key: without one the page refuses.
	do(t, ctx, chromedp.Click(chromedp.CSS(`.approval-card[data-job="`+id+`"] button.allow-all`)))
	waitJS(t, ctx, "a refusal without a key", card+`.querySelector('.outcome').textContent.includes('load your signing key')`)

	// The seed goes into the page (never to the server); the page shows
	// the key it derived, which the policy gives alice.
	do(t, ctx, chromedp.SendKeys(chromedp.CSS("#seed"), string(f.alice.seed)+"\t"))
	waitJS(t, ctx, "the key loaded", `document.getElementById('key-status').textContent.includes('`+f.alice.key+`')`)
	assert.Empty(t, eval[string](t, ctx, `document.getElementById('seed').value`), "the seed does not stay in the form")
	screenshot(t, ctx, "3-approvals-inbox")
	do(t, ctx, chromedp.Click(chromedp.CSS(`.approval-card[data-job="`+id+`"] button.allow-all`)))
	waitJS(t, ctx, "the decision sent", card+` === null || `+card+`.querySelector('.outcome').textContent.includes('decision sent')`)
	waitJS(t, ctx, "the inbox empty", `document.getElementById('no-approvals') !== null`)

	// The job's page: live events, the result, the approval and the audit.
	do(t, ctx, chromedp.Navigate(f.url+"/jobs/"+id), chromedp.WaitVisible(chromedp.CSS("#job-id")))
	waitJS(t, ctx, "the job completed", `document.getElementById('job-status') && document.getElementById('job-status').textContent === 'completed'`)
	waitJS(t, ctx, "the live events", `document.querySelectorAll('#events li').length > 3`)
	assert.Contains(t, eval[string](t, ctx, `document.getElementById('stdout').textContent`), "Restarted: "+hostile+" done.")
	assert.Contains(t, eval[string](t, ctx, `document.getElementById('events').textContent`), "Looking "+hostile)
	audit := eval[string](t, ctx, `document.querySelector('section.audit').textContent`)
	assert.Contains(t, audit, "decision_applied")
	assert.Contains(t, audit, "alice")
	noScriptRan(t, ctx)
	screenshot(t, ctx, "4-job-completed")

	// The worker applied the browser's signature (signing.Verify there),
	// and names alice's key as the approver.
	res, err := f.client.WaitResult(ctxSub, id)
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	require.Len(t, res.Approvals, 1)
	assert.Equal(t, schemas.DecideAllow, res.Approvals[0].Decision)
	require.Len(t, res.Approvals[0].Approvers, 1)
	assert.Equal(t, schemas.ApproverRef{Name: "alice", Key: f.alice.key}, res.Approvals[0].Approvers[0])

	for _, page := range []string{"/jobs", "/dead", "/workers", "/policy"} {
		do(t, ctx, chromedp.Navigate(f.url+page), chromedp.WaitVisible(chromedp.CSS("main h1")))
		noScriptRan(t, ctx)
	}
	assert.Contains(t, eval[string](t, ctx, `document.getElementById('policy-signed').textContent`), "signed")
	screenshot(t, ctx, "5-policy")
}

// TestBrowserSignerMatchesVector: the page's signer (vendored ed25519, its
// own JCS) gives the test vector's bytes exactly, and what it signs
// verifies with signing.Verify.
func TestBrowserSignerMatchesVector(t *testing.T) {
	f := newFleet(t)
	ctx := browser(t)
	signIn(t, ctx, f.url, "alice", "alice-pw")
	do(t, ctx, chromedp.Navigate(f.url+"/approvals"), chromedp.WaitVisible(chromedp.CSS("#key-panel")))
	waitJS(t, ctx, "the signer", `window.jetpilotSign !== undefined && window.nacl !== undefined`)

	raw, err := os.ReadFile(filepath.Join("..", "schemas", "examples", "signing-vector.json"))
	require.NoError(t, err)
	var vector struct {
		Seed             string          `json:"seed"`
		PublicKey        string          `json:"public_key"`
		Document         json.RawMessage `json:"document"`
		Canonical        string          `json:"canonical"`
		Signature        schemas.Signature
		PendingToolCalls json.RawMessage `json:"pending_tool_calls"`
		PendingCanonical string          `json:"pending_canonical"`
		PendingDigest    string          `json:"pending_digest"`
	}
	require.NoError(t, json.Unmarshal(raw, &vector))
	js := func(v any) string { b, _ := json.Marshal(v); return string(b) }

	assert.Equal(t, vector.PublicKey, eval[string](t, ctx, `jetpilotSign.publicKey(`+js(vector.Seed)+`)`))
	assert.Equal(t, vector.Canonical, eval[string](t, ctx, `(() => { const d = `+string(vector.Document)+`; delete d.signature; return jetpilotSign.jcs(d); })()`))
	assert.Equal(t, vector.PendingCanonical, eval[string](t, ctx, `jetpilotSign.jcs(`+string(vector.PendingToolCalls)+`)`))
	assert.Equal(t, vector.PendingDigest, eval[string](t, ctx, `jetpilotSign.pendingDigest(`+string(vector.PendingToolCalls)+`)`))
	signed := eval[string](t, ctx, `jetpilotSign.sign(`+string(vector.Document)+`, `+js(vector.Seed)+`).then(JSON.stringify)`)
	var got struct {
		Signature schemas.Signature `json:"signature"`
	}
	require.NoError(t, json.Unmarshal([]byte(signed), &got))
	assert.Equal(t, vector.Signature, got.Signature, "the browser's signature is the vector's")
	key, err := signing.Verify([]byte(signed))
	require.NoError(t, err, "signing.Verify accepts the browser's signature")
	assert.Equal(t, vector.PublicKey, key)

	// A fresh decision signed with a new key verifies too.
	doc := `{"approval_id":"a:1","job_id":"j-1","decisions":{"call_1":{"action":"reject","content":"nicht heute — 🚫 <b>"}},"decided_by":"alice","pending_digest":"` +
		strings.Repeat("ab", 32) + `","decided_at":"2026-01-02T03:04:05Z"}`
	signed = eval[string](t, ctx, `jetpilotSign.sign(`+doc+`, `+js(string(f.alice.seed))+`).then(JSON.stringify)`)
	key, err = signing.Verify([]byte(signed))
	require.NoError(t, err)
	assert.Equal(t, f.alice.key, key)
	_, err = schemas.DecodeDecision([]byte(signed))
	require.NoError(t, err, "the browser's decision is a valid decision")
}

// TestBrowserViewerIsReadOnly: a viewer sees the inbox without controls,
// and a decision or requeue posted from the page anyway (with the
// session's CSRF token) is refused with 403.
func TestBrowserViewerIsReadOnly(t *testing.T) {
	f := newFleet(t)
	f.startWorker()
	ctx := browser(t)
	ctxSub, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err := f.client.Submit(ctxSub, schemas.Job{ID: "ro-1", Prompt: "#sim tool stakpak__run_command {\"command\":\"kubectl apply -f x\"}\n#sim text done"})
	require.NoError(t, err)

	signIn(t, ctx, f.url, "victor", "victor-pw")
	do(t, ctx, chromedp.Navigate(f.url+"/approvals"), chromedp.WaitVisible(chromedp.CSS("#readonly")))
	waitJS(t, ctx, "the paused job in the inbox", `document.querySelector('.approval-card[data-job="ro-1"]') !== null`)
	assert.Equal(t, 0, eval[int](t, ctx, `document.querySelectorAll('.approval-card button, #seed').length`), "no controls for a viewer")
	screenshot(t, ctx, "6-viewer-inbox")

	status := eval[int](t, ctx, `(() => { const c = document.querySelector('.approval-card');
	  return fetch('/approvals/decide', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': document.body.dataset.csrf},
	    body: JSON.stringify({approval_id: c.dataset.approval, job_id: c.dataset.job, all: 'allow'})}).then(r => r.status); })()`)
	assert.Equal(t, 403, status, "a viewer's decision is refused")
	status = eval[int](t, ctx, `fetch('/dead/requeue', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'},
	    body: 'seq=1&csrf=' + encodeURIComponent(document.body.dataset.csrf)}).then(r => r.status)`)
	assert.Equal(t, 403, status, "a viewer's requeue is refused")
	status = eval[int](t, ctx, `fetch('/approvals/decide', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'}).then(r => r.status)`)
	assert.Equal(t, 403, status, "a POST without the CSRF token is refused")

	// Still paused: nothing was decided.
	rec, _, err := mustRunStore(t, f).Get(ctxSub, "ro-1")
	require.NoError(t, err)
	assert.Equal(t, queue.RunPaused, rec.State)
}

func mustRunStore(t *testing.T, f *fleet) *queue.RunStore {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	rs, err := queue.NewRunStore(ctx, f.js, f.qcfg)
	require.NoError(t, err)
	return rs
}

// TestBrowserWorkersAndRequeue: the workers page shows the job a worker
// holds as it runs, and a dead letter is requeued from its page as a new
// attempt under a new id, which runs.
func TestBrowserWorkersAndRequeue(t *testing.T) {
	f := newFleet(t)
	f.startWorker()
	ctx := browser(t)
	signIn(t, ctx, f.url, "alice", "alice-pw")
	ctxSub, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()

	do(t, ctx, chromedp.Navigate(f.url+"/workers"), chromedp.WaitVisible(chromedp.CSS("table.workers")))
	_, err := f.client.Submit(ctxSub, schemas.Job{ID: "hold-1", Prompt: "#sim sleep 4s\n#sim text ok"})
	require.NoError(t, err)
	waitJS(t, ctx, "w1 holding hold-1", `(() => { const r = document.querySelector('tr[data-worker="w1"]'); return r !== null && r.textContent.includes('hold-1'); })()`)
	screenshot(t, ctx, "7-workers")

	_, err = f.client.Submit(ctxSub, schemas.Job{ID: "die-1", Prompt: "#sim error boom"})
	require.NoError(t, err)
	do(t, ctx, chromedp.Navigate(f.url+"/dead"), chromedp.WaitVisible(chromedp.CSS("table.dead")))
	waitJS(t, ctx, "the dead letter listed", `document.querySelector('tr[data-job="die-1"] button.requeue') !== null`)
	screenshot(t, ctx, "8-dead")
	seq := eval[string](t, ctx, `document.querySelector('tr[data-job="die-1"]').dataset.seq`)
	do(t, ctx, chromedp.Click(chromedp.CSS(`tr[data-job="die-1"] button.requeue`)), chromedp.WaitVisible(chromedp.CSS("#job-id")))
	newID := queue.RequeueID("die-1", mustUint(t, seq))
	waitJS(t, ctx, "the requeued job's page", `document.getElementById('job-id') !== null && document.getElementById('job-id').textContent === '`+newID+`'`)
	res, err := f.client.WaitResult(ctxSub, newID)
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusFailed, res.Status, "the requeued job ran (and failed the same way)")
	waitJS(t, ctx, "the requeued job's result on its page", `document.getElementById('job-status') !== null`)
}

func mustUint(t *testing.T, s string) uint64 {
	t.Helper()
	var n uint64
	_, err := fmt.Sscan(s, &n)
	require.NoError(t, err)
	return n
}
