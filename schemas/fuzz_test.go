package schemas

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func addExampleSeeds(f *testing.F, pattern string) {
	files, err := filepath.Glob(filepath.Join("examples", pattern))
	require.NoError(f, err)
	require.NotEmpty(f, files)
	for _, file := range files {
		data, err := os.ReadFile(file)
		require.NoError(f, err)
		f.Add(data)
	}
}

// jobFuzzSeeds seed FuzzDecodeJob and FuzzJobFastPath.
var jobFuzzSeeds = []string{
	``, `{}`, `[]`, `null`, `{"id":"a","prompt":"p"}{}`, `{"id":"a b","prompt":" "}`,
	job(`"timeout":"1h"`), job(`"timeout":"-1s"`), job(`"overrides":{"max_turns":1e2,"auto_approve":[]}`),
	job(`"overrides":{"auto_approve":"all"},"caller_context":[{"name":"n","content":""}]`),
	job(`"metadata":{"a/b~c":"d"},"allowed_tools":[]`), `{"id":"\u00e9","prompt":"\ud800"}`,
	job(`"sandbox":false,"overrides":{}`), `{"id":"x","prompt":"p","id":"y"}`,
	job(`"overrides":{"max_turns":1e999}`), job(`"overrides":{"max_turns":25600e-2}`), `[1e5,{"a":[-0.0]}]`,
}

// FuzzDecodeJob: no input panics; every rejection is a *ValidationError
// with at least one readable problem; every accepted job is valid per
// the schema, names the id JobIDOf finds, and survives a marshal/decode
// round trip unchanged.
func FuzzDecodeJob(f *testing.F) {
	addExampleSeeds(f, "job-*.json")
	for _, seed := range jobFuzzSeeds {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := DecodeJob(data)
		if err != nil {
			var verr *ValidationError
			require.True(t, errors.As(err, &verr), "error is not a *ValidationError: %v", err)
			require.NotEmpty(t, verr.Problems)
			for _, p := range verr.Problems {
				require.NotEmpty(t, p.Reason)
			}
			require.True(t, j.ID == "" || ValidJobID(j.ID), "partial job has invalid id %q", j.ID)
			return
		}
		require.True(t, ValidJobID(j.ID))
		require.Equal(t, j.ID, JobIDOf(data))
		require.NoError(t, Validate("job", j))
		out, err := json.Marshal(j)
		require.NoError(t, err)
		again, err := DecodeJob(out)
		require.NoError(t, err, "%s", out)
		require.Equal(t, j, again)
	})
}

// FuzzDecodeDecision: as FuzzDecodeJob, for decisions.
func FuzzDecodeDecision(f *testing.F) {
	addExampleSeeds(f, "decision-*.json")
	for _, seed := range []string{
		``, `{}`, decision(`"all":"allow"`), decision(`"all":"allow","decisions":{}`),
		decision(`"decisions":{"c":{"action":"custom_result"}}`), decision(`"decisions":{"":{"action":"accept"}}`),
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := DecodeDecision(data)
		if err != nil {
			var verr *ValidationError
			require.True(t, errors.As(err, &verr), "error is not a *ValidationError: %v", err)
			require.NotEmpty(t, verr.Problems)
			return
		}
		require.True(t, (d.All == "") != (len(d.Decisions) == 0), "exactly one of all and decisions: %+v", d)
		require.NoError(t, Validate("decision", d))
		out, err := json.Marshal(d)
		require.NoError(t, err)
		again, err := DecodeDecision(out)
		require.NoError(t, err, "%s", out)
		require.Equal(t, d, again)
	})
}
