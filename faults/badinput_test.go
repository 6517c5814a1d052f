package faults

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

// TestMalformedJobs sends malformed jobs through a real worker process.
// Each ends in exactly one rejected result that names the bad field and
// exactly one dead letter, and never reaches the agent server.
func TestMalformedJobs(t *testing.T) {
	started := time.Now()
	s, _, js := testnats.Start(t)
	sim, simURL := agentsimtest.New(t, agentsim.Options{})
	startWorker(t, workerOpts{name: "w1", natsURL: testnats.URL(s), agentURL: simURL})
	client := queue.NewClient(js, queue.Config{})
	ctx := testsupport.Context(t, 5*time.Minute)

	long := func(n int) string { return strings.Repeat("x", n) }
	items := func(n int, item string) string {
		return "[" + strings.TrimSuffix(strings.Repeat(item+",", n), ",") + "]"
	}
	keys := func(n int) string {
		var kv []string
		for i := range n {
			kv = append(kv, fmt.Sprintf("%q:\"v\"", fmt.Sprintf("k%d", i)))
		}
		return "{" + strings.Join(kv, ",") + "}"
	}
	// %[1]s is the job id; fields are what the rejection must name (a
	// field path, or words of the message for bodies that have no fields).
	cases := []struct {
		name, body, profile, names string
	}{
		{"empty body", ``, "", "JSON"},
		{"not JSON", `not json at all`, "", "JSON"},
		{"array", `[]`, "", "object"},
		{"null", `null`, "", "object"},
		{"truncated JSON", `{"id":"%[1]s","prompt":"p"`, "", "JSON"},
		{"missing prompt", `{"id":"%[1]s"}`, "", "prompt"},
		{"empty prompt", `{"id":"%[1]s","prompt":""}`, "", "prompt"},
		{"blank prompt", `{"id":"%[1]s","prompt":"  \n\t "}`, "", "prompt"},
		{"prompt not a string", `{"id":"%[1]s","prompt":["p"]}`, "", "prompt"},
		{"missing id", `{"prompt":"p"}`, "", "id"},
		{"id with spaces", `{"id":"bad id!","prompt":"p"}`, "", "id"},
		{"id too long", `{"id":"` + long(129) + `","prompt":"p"}`, "", "id"},
		{"id a number", `{"id":42,"prompt":"p"}`, "", "id"},
		{"unknown field", `{"id":"%[1]s","prompt":"p","promt":"x"}`, "", `"promt"`},
		{"timeout not a duration", `{"id":"%[1]s","prompt":"p","timeout":"5 minutes"}`, "", "timeout"},
		{"negative timeout", `{"id":"%[1]s","prompt":"p","timeout":"-1s"}`, "", "timeout"},
		{"timeout a number", `{"id":"%[1]s","prompt":"p","timeout":30}`, "", "timeout"},
		{"profile with a dot", `{"id":"%[1]s","prompt":"p","profile":"a.b"}`, "", "profile"},
		{"profile of another subject", `{"id":"%[1]s","prompt":"p","profile":"other"}`, "", "profile"},
		{"sandbox a string", `{"id":"%[1]s","prompt":"p","sandbox":"yes"}`, "", "sandbox"},
		{"pause_on_approval a number", `{"id":"%[1]s","prompt":"p","pause_on_approval":1}`, "", "pause_on_approval"},
		{"allowed_tools a string", `{"id":"%[1]s","prompt":"p","allowed_tools":"view"}`, "", "allowed_tools"},
		{"allowed_tools empty name", `{"id":"%[1]s","prompt":"p","allowed_tools":[""]}`, "", "allowed_tools"},
		{"33 context items", `{"id":"%[1]s","prompt":"p","caller_context":` + items(33, `{"name":"n","content":"c"}`) + `}`, "", "caller_context"},
		{"context item without content", `{"id":"%[1]s","prompt":"p","caller_context":[{"name":"n"}]}`, "", "caller_context"},
		{"context content over 50000", `{"id":"%[1]s","prompt":"p","caller_context":[{"name":"n","content":"` + long(50001) + `"}]}`, "", "caller_context"},
		{"context over 500000 in all", `{"id":"%[1]s","prompt":"p","caller_context":` + items(11, `{"name":"n","content":"`+long(50000)+`"}`) + `}`, "", "caller_context"},
		{"context name too long", `{"id":"%[1]s","prompt":"p","caller_context":[{"name":"` + long(257) + `","content":"c"}]}`, "", "caller_context"},
		{"max_turns 0", `{"id":"%[1]s","prompt":"p","overrides":{"max_turns":0}}`, "", "max_turns"},
		{"max_turns 257", `{"id":"%[1]s","prompt":"p","overrides":{"max_turns":257}}`, "", "max_turns"},
		{"max_turns fractional", `{"id":"%[1]s","prompt":"p","overrides":{"max_turns":2.5}}`, "", "max_turns"},
		{"auto_approve unknown mode", `{"id":"%[1]s","prompt":"p","overrides":{"auto_approve":"some"}}`, "", "auto_approve"},
		{"system_prompt over 32 KiB", `{"id":"%[1]s","prompt":"p","overrides":{"system_prompt":"` + long(32769) + `"}}`, "", "system_prompt"},
		{"unknown override", `{"id":"%[1]s","prompt":"p","overrides":{"temperature":2}}`, "", "temperature"},
		{"metadata value a number", `{"id":"%[1]s","prompt":"p","metadata":{"k":1}}`, "", "metadata"},
		{"65 metadata keys", `{"id":"%[1]s","prompt":"p","metadata":` + keys(65) + `}`, "", "metadata"},
		{"schema of another version", `{"schema":"jetpilot.job.v2","id":"%[1]s","prompt":"p"}`, "", "schema"},
		{"model too long", `{"id":"%[1]s","prompt":"p","model":"` + long(257) + `"}`, "", "model"},
		{"workdir an object", `{"id":"%[1]s","prompt":"p","workdir":{}}`, "", "workdir"},
	}
	require.GreaterOrEqual(t, len(cases), 30)
	for i, tc := range cases {
		id := fmt.Sprintf("bad-%02d", i)
		body := tc.body
		if strings.Contains(body, "%[1]s") {
			body = fmt.Sprintf(body, id)
		}
		_, err := client.SubmitRaw(ctx, tc.profile, id, []byte(body))
		require.NoError(t, err, "publish %s", tc.name)
	}
	rejected := 0
	for i, tc := range cases {
		id := fmt.Sprintf("bad-%02d", i)
		t.Run(id+" "+tc.name, func(t *testing.T) {
			res, err := client.WaitResult(ctx, id)
			require.NoError(t, err)
			assert.Equal(t, schemas.StatusRejected, res.Status)
			require.NotNil(t, res.Error)
			assert.True(t, names(res.Error, tc.names), "rejection names %q: %s %+v", tc.names, res.Error.Message, res.Error.Fields)
			assert.True(t, res.DeadLettered)
			rejected++
		})
	}
	require.Eventually(t, func() bool { return testsupport.StreamLen(ctx, js, "JETPILOT_JOBS") == 0 }, waitFor, 20*time.Millisecond, "every job settled")
	results, err := testsupport.ReadStream(ctx, js, "JETPILOT_RESULTS", "")
	require.NoError(t, err)
	dead, err := testsupport.ReadStream(ctx, js, "JETPILOT_DEAD", "")
	require.NoError(t, err)
	perJob := map[string]int{}
	for _, m := range results {
		var r schemas.Result
		require.NoError(t, json.Unmarshal(m.Data(), &r))
		perJob[r.JobID]++
	}
	deadPerJob := map[string]int{}
	for _, m := range dead {
		var d schemas.DeadLetter
		require.NoError(t, json.Unmarshal(m.Data(), &d))
		deadPerJob[d.JobID]++
	}
	dups, lost := 0, 0
	for i := range cases {
		id := fmt.Sprintf("bad-%02d", i)
		assert.Equal(t, 1, perJob[id], "results of %s", id)
		assert.Equal(t, 1, deadPerJob[id], "dead letters of %s", id)
		dups += max(0, perJob[id]-1)
		if perJob[id] == 0 {
			lost++
		}
	}
	assert.Len(t, results, len(cases), "one result per malformed job, nothing else")
	assert.Len(t, dead, len(cases), "one dead letter per malformed job")
	assert.Zero(t, sim.RunsStarted(), "no malformed job reached the agent server")
	assert.Zero(t, sim.SessionCount())
	report(t, figures{
		Scenario: "6. malformed jobs", Load: fmt.Sprintf("%d malformed jobs, 1 worker process", len(cases)),
		Faults: fmt.Sprintf("bad JSON, missing/invalid fields, over-limit values; %d rejected, %d dead letters", rejected, len(dead)),
		Lost:   lost, Duplicates: dups, Elapsed: time.Since(started),
		Command: "go test -race -run TestMalformedJobs -v ./faults/",
	})
}

// names reports whether the rejection names field: a field path that is
// it or contains it, or the message.
func names(e *schemas.Error, field string) bool {
	for _, f := range e.Fields {
		if f.Field == field || strings.Contains(f.Field, field) || strings.Contains(f.Reason, field) {
			return true
		}
	}
	return strings.Contains(e.Message, field)
}
