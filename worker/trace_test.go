package worker_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/internal/tracing"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// A producer's span: the job message carries it as traceparent.
const (
	producerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	producerSpan  = "00f067aa0ba902b7"
)

// inMemoryTracing installs a tracer provider that keeps every span, for
// the test's length.
func inMemoryTracing(t *testing.T) *tracetest.InMemoryExporter {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() {
		otel.SetTracerProvider(prev)
		_ = tp.Shutdown(context.Background())
	})
	return exp
}

// approveTracedJob publishes a pausing job with the producer's traceparent,
// allows its calls with a decision that carries none (the run record has
// the job's), waits for it to complete, and returns its approval request.
func approveTracedJob(t *testing.T, h *harness, id string) schemas.ApprovalRequest {
	t.Helper()
	data, err := json.Marshal(pausingJob(id))
	require.NoError(t, err)
	msg := &nats.Msg{Subject: h.qcfg.JobSubject(schemas.DefaultProfile), Data: data,
		Header: nats.Header{"traceparent": {"00-" + producerTrace + "-" + producerSpan + "-01"}}}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err = h.js.PublishMsg(ctx, msg, jetstream.WithMsgID(id))
	require.NoError(t, err)
	req := h.approval(id)
	h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: id, All: schemas.DecideAllow, DecidedBy: "alice"})
	require.Equal(t, schemas.StatusCompleted, h.final(id).Status)
	return req
}

// publishedTraceParents is the traceparent header of every result, approval
// request and event published for job id, by subject.
func publishedTraceParents(t *testing.T, h *harness, id string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, src := range []struct{ stream, subject string }{
		{h.qcfg.ResultsStream(), h.qcfg.ResultSubject(id)},
		{h.qcfg.ApprovalsStream(), h.qcfg.ApprovalSubject(id)},
		{h.qcfg.EventsStream(), h.qcfg.EventSubject(id)},
	} {
		msgs, err := h.tryAll(src.stream, src.subject)
		require.NoError(t, err)
		require.NotEmpty(t, msgs, src.subject)
		for _, m := range msgs {
			out[src.subject] = append(out[src.subject], m.Headers().Get("traceparent"))
		}
	}
	return out
}

// TestTraceOfAJobWithAnApproval submits a job with a traceparent, lets it
// pause, decides it, and checks the span tree and that the traceparent
// reached every result, the approval request and the events.
func TestTraceOfAJobWithAnApproval(t *testing.T) {
	exp := inMemoryTracing(t)
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})

	req := approveTracedJob(t, h, "traced-1")

	// Every message published for the job carries the producer's trace.
	for subject, tps := range publishedTraceParents(t, h, "traced-1") {
		for _, tp := range tps {
			assert.True(t, strings.HasPrefix(tp, "00-"+producerTrace+"-"), "%s: traceparent %q", subject, tp)
			assert.NotContains(t, tp, producerSpan, "%s: the worker's own span is the parent, not the producer's", subject)
		}
	}

	// The span tree: both phases' spans in the producer's trace.
	var spans tracetest.SpanStubs
	byName := map[string][]tracetest.SpanStub{}
	eventuallyWithT(t, func(c *assert.CollectT) {
		spans = exp.GetSpans()
		byName = map[string][]tracetest.SpanStub{}
		for _, s := range spans {
			byName[s.Name] = append(byName[s.Name], s)
		}
		assert.Len(c, byName["job"], 1)
		assert.Len(c, byName["decision"], 1)
		// One for the pause, one for the end, one per look at the expiry timer.
		assert.GreaterOrEqual(c, len(byName["settle"]), 2)
	}, "spans of both phases ended")
	for _, s := range spans {
		assert.Equal(t, producerTrace, s.SpanContext.TraceID().String(), "span %s", s.Name)
	}
	jobSpan := byName["job"][0]
	assert.Equal(t, producerSpan, jobSpan.Parent.SpanID().String(), "the job span is the producer's child")
	assert.True(t, jobSpan.Parent.IsRemote())
	childOf := func(name string, parent tracetest.SpanStub) {
		t.Helper()
		require.NotEmpty(t, byName[name], "span %s", name)
		found := false
		for _, s := range byName[name] {
			found = found || s.Parent.SpanID() == parent.SpanContext.SpanID()
		}
		assert.True(t, found, "a %s span is a child of %s", name, parent.Name)
	}
	for _, name := range []string{"fetch", "session.create", "send", "follow", "settle", "approval.wait", "decision"} {
		childOf(name, jobSpan)
	}
	decision := byName["decision"][0]
	for _, name := range []string{"fetch", "follow", "decide", "settle"} {
		childOf(name, decision)
	}
	wait := byName["approval.wait"][0]
	assert.False(t, wait.StartTime.After(decision.StartTime), "the wait ends where the decision begins")
	assert.Equal(t, req.RequestedAt.Unix(), wait.StartTime.Unix(), "the wait begins at the request")
}

// logRecords are the JSON log records written to logs so far.
func logRecords(logs *testsupport.SyncBuffer) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(logs.String(), "\n") {
		var r map[string]any
		if json.Unmarshal([]byte(line), &r) == nil {
			out = append(out, r)
		}
	}
	return out
}

// TestTraceStartsAtAJobWithout: a job without a traceparent gets a trace
// of its own, which its result carries; its start and end are one info
// line each, with the trace id.
func TestTraceStartsAtAJobWithout(t *testing.T) {
	exp := inMemoryTracing(t)
	h := newHarness(t, queue.Config{})
	logs := &testsupport.SyncBuffer{}
	h.startWorker(worker.Options{Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	h.submit(job("untraced-1", "#sim text ok"))
	require.Equal(t, schemas.StatusCompleted, h.final("untraced-1").Status)
	msgs, err := h.tryAll(h.qcfg.ResultsStream(), h.qcfg.ResultSubject("untraced-1"))
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	tp := msgs[0].Headers().Get("traceparent")
	var root tracetest.SpanStub
	eventually(t, func() bool {
		for _, s := range exp.GetSpans() {
			if s.Name == "job" {
				root = s
				return true
			}
		}
		return false
	}, "job span")
	assert.False(t, root.Parent.IsValid(), "a root span")
	assert.Equal(t, "00-"+root.SpanContext.TraceID().String()+"-", tp[:36], "the result carries the job's new trace")

	byMsg := map[string][]map[string]any{}
	eventuallyWithT(t, func(c *assert.CollectT) {
		byMsg = map[string][]map[string]any{}
		for _, r := range logRecords(logs) {
			if r["job_id"] == "untraced-1" {
				byMsg[r["msg"].(string)] = append(byMsg[r["msg"].(string)], r)
			}
		}
		assert.Len(c, byMsg["job settled"], 1)
	}, "the job's end logged")
	require.Len(t, byMsg["job started"], 1)
	for _, msg := range []string{"job started", "job settled"} {
		r := byMsg[msg][0]
		assert.Equal(t, "INFO", r["level"], msg)
		assert.Equal(t, root.SpanContext.TraceID().String(), r["trace_id"], msg)
	}
	assert.Equal(t, "default", byMsg["job started"][0]["profile"])
}

// TestTraceContextPassesThroughWithoutTracing: with no tracer provider
// installed the worker records no spans, but a job's traceparent still
// reaches every message of both phases (the decision's phase through the run
// record) and the job's log lines.
func TestTraceContextPassesThroughWithoutTracing(t *testing.T) {
	require.False(t, tracing.Enabled(), "no tracer provider installed")
	h := newHarness(t, queue.Config{})
	logs := &testsupport.SyncBuffer{}
	h.startWorker(worker.Options{Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})

	approveTracedJob(t, h, "passed-1")
	for subject, tps := range publishedTraceParents(t, h, "passed-1") {
		for _, tp := range tps {
			assert.True(t, strings.HasPrefix(tp, "00-"+producerTrace+"-"), "%s: traceparent %q", subject, tp)
		}
	}
	eventuallyWithT(t, func(c *assert.CollectT) {
		started, settled := 0, 0
		for _, r := range logRecords(logs) {
			if r["job_id"] != "passed-1" {
				continue
			}
			switch r["msg"] {
			case "job started":
				started++
				assert.Equal(c, producerTrace, r["trace_id"], "job started")
			case "job settled":
				settled++
				assert.Equal(c, producerTrace, r["trace_id"], "job settled")
			}
		}
		assert.Equal(c, 1, started, "job started logged once")
		assert.Equal(c, 1, settled, "job settled logged once")
	}, "the job's start and end logged with its trace")
}
