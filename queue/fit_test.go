package queue_test

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

func bigResult() schemas.Result {
	res := schemas.Result{JobID: "fit-1", Stdout: strings.Repeat("<", 3000) + "THE END", Stderr: strings.Repeat("e", 20000),
		Metadata: map[string]string{"m": strings.Repeat("&", 3000)}}
	res.SetStatus(schemas.StatusPaused)
	res.PauseReason = &schemas.PauseReason{Type: schemas.PauseToolApproval, PendingToolCalls: []schemas.ToolCall{
		{ID: "call_1", Name: "run_command", Arguments: json.RawMessage(`"` + strings.Repeat(">", 3000) + `"`)},
	}}
	return res
}

func decodeResult(t *testing.T, data []byte) schemas.Result {
	t.Helper()
	var r schemas.Result
	require.NoError(t, json.Unmarshal(data, &r))
	require.NoError(t, schemas.Validate("result", data))
	return r
}

// Each shrink step, in order, against a limit that forces it.
func TestFitResultShrinksInOrder(t *testing.T) {
	t.Parallel()
	res := bigResult()
	full, err := queue.Encode(res)
	require.NoError(t, err)
	assert.NotContains(t, string(full), `\u003c`, "no HTML escaping")

	// Any limit: stderr is capped.
	data, err := queue.FitResult(res, 1<<20)
	require.NoError(t, err)
	r := decodeResult(t, data)
	assert.Less(t, len(r.Stderr), queue.MaxErrorBytes+100)
	assert.True(t, strings.HasSuffix(r.Stdout, "THE END"))

	// 1. stdout keeps its end.
	data, err = queue.FitResult(res, len(data)-1000)
	require.NoError(t, err)
	r = decodeResult(t, data)
	assert.True(t, strings.HasSuffix(r.Stdout, "THE END"))
	assert.Less(t, len(r.Stdout), len(res.Stdout))
	assert.Contains(t, strings.Join(r.Warnings, "\n"), "stdout cut")
	assert.NotEmpty(t, r.Metadata)

	// 2-3. stdout gone, error text shortened, arguments cut and marked.
	data, err = queue.FitResult(res, 7000)
	require.NoError(t, err)
	assert.LessOrEqual(t, len(data), 7000)
	r = decodeResult(t, data)
	assert.Empty(t, r.Stdout)
	require.Len(t, r.PauseReason.PendingToolCalls, 1)
	assert.True(t, r.PauseReason.PendingToolCalls[0].ArgumentsTruncated)

	// 4. metadata dropped.
	data, err = queue.FitResult(res, 2500)
	require.NoError(t, err)
	assert.LessOrEqual(t, len(data), 2500)
	r = decodeResult(t, data)
	assert.Empty(t, r.Metadata)
	assert.Contains(t, strings.Join(r.Warnings, "\n"), "metadata dropped")

	// The last resort: the minimal result, which always fits.
	many := res
	many.PauseReason = &schemas.PauseReason{Type: schemas.PauseToolApproval}
	for i := range 40 {
		many.PauseReason.PendingToolCalls = append(many.PauseReason.PendingToolCalls, schemas.ToolCall{ID: strings.Repeat("c", 20) + string(rune('a'+i%26)), Name: "tool"})
	}
	data, err = queue.FitResult(many, 1200)
	require.NoError(t, err)
	r = decodeResult(t, data)
	assert.Equal(t, schemas.StatusPaused, r.Status)
	assert.Equal(t, "fit-1", r.JobID)
	assert.Contains(t, r.Warnings[0], "cut to its minimum")
}

func TestFitDeadKeepsTheJobExactly(t *testing.T) {
	t.Parallel()
	notUTF8 := []byte{'{', 0xff, 0xfe, '}', 0}
	var dl schemas.DeadLetter
	dl.JobID, dl.Reason, dl.Error = "d-1", "invalid_job", "bad"
	dl.SetJob(notUTF8)
	data, err := queue.FitDead(dl, 1<<20)
	require.NoError(t, err)
	var got schemas.DeadLetter
	require.NoError(t, json.Unmarshal(data, &got))
	require.NoError(t, schemas.Validate("dead", data))
	assert.Equal(t, notUTF8, got.Received(), "base64, byte for byte")

	// Too big for a dead letter: its start, marked.
	dl.SetJob([]byte(`{"id":"d-1","prompt":"` + strings.Repeat("<", 50000) + `"}`))
	data, err = queue.FitDead(dl, 20000)
	require.NoError(t, err)
	assert.LessOrEqual(t, len(data), 20000)
	require.NoError(t, json.Unmarshal(data, &got))
	assert.True(t, got.JobTruncated)
	head, err := base64.StdEncoding.DecodeString(got.RawBase64)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(`{"id":"d-1","prompt":"<<<`, string(head[:10])))
}

func TestFitApprovalCutsArguments(t *testing.T) {
	t.Parallel()
	req := schemas.ApprovalRequest{ApprovalID: "apr_1", JobID: "a-1", PendingToolCalls: []schemas.ToolCall{
		{ID: "call_1", Name: "x", Arguments: json.RawMessage(`"` + strings.Repeat("a", 50000) + `"`)},
	}}
	data, err := queue.FitApproval(req, 10000)
	require.NoError(t, err)
	assert.LessOrEqual(t, len(data), 10000)
	var got schemas.ApprovalRequest
	require.NoError(t, json.Unmarshal(data, &got))
	assert.True(t, got.PendingToolCalls[0].ArgumentsTruncated)
}

// Through a real server: a result full of characters JSON could escape
// still publishes, measured against the connection's limit.
func TestPublishPoisonResult(t *testing.T) {
	e := setupEnv(t, queue.Config{})
	res := schemas.Result{JobID: "poison-1", Stdout: strings.Repeat("<", 900<<10) + " done",
		Metadata: map[string]string{"m": strings.Repeat("<", 150<<10)}}
	res.SetStatus(schemas.StatusCompleted)
	_, err := queue.PublishResult(e.ctx, e.js, e.cfg, res, 0)
	require.NoError(t, err)
	c := queue.NewClient(e.js, e.cfg)
	got, err := c.WaitResult(e.ctx, "poison-1")
	require.NoError(t, err)
	assert.True(t, strings.HasSuffix(got.Stdout, " done"))
	assert.NotEmpty(t, got.Warnings)
}
