package schemas

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// requireFastImpliesFull is the fast path's contract: when it accepts a
// document, the full validation accepts it too and builds the same Job;
// and DecodeJob answers exactly as the full path does.
func requireFastImpliesFull(t testing.TB, data []byte) (fastOK bool) {
	t.Helper()
	fast, ok := fastDecodeJob(data)
	full, fullErr := decodeJobFull(data)
	if ok {
		require.NoError(t, fullErr, "fast path accepted a job the full validation rejects: %q", data)
		require.Equal(t, full, fast, "fast path built another job from %q", data)
	}
	got, err := DecodeJob(data)
	require.Equal(t, full, got, "%q", data)
	require.Equal(t, fullErr, err, "%q", data)
	return ok
}

// fuzzCorpus reads the inputs of one fuzz target's seed corpus.
func fuzzCorpus(t testing.TB, target string) [][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "fuzz", target, "*"))
	require.NoError(t, err)
	require.NotEmpty(t, files, target)
	var out [][]byte
	for _, file := range files {
		data, err := os.ReadFile(file)
		require.NoError(t, err)
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		require.Equal(t, "go test fuzz v1", lines[0], file)
		for _, l := range lines[1:] {
			q, ok := strings.CutPrefix(l, "[]byte(")
			require.True(t, ok, "%s: %s", file, l)
			s, err := strconv.Unquote(strings.TrimSuffix(q, ")"))
			require.NoError(t, err, file)
			out = append(out, []byte(s))
		}
	}
	return out
}

func exampleFiles(t testing.TB) [][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("examples", "*.json"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	var out [][]byte
	for _, file := range files {
		data, err := os.ReadFile(file)
		require.NoError(t, err)
		out = append(out, data)
	}
	return out
}

// fastPathEdgeCases are documents near every line the fast path draws.
var fastPathEdgeCases = []string{
	`{"id":"j1","prompt":"p"}`, ` {"id":"j1","prompt":"p"} `, "\t{\r\n\"id\" : \"j1\" ,\n\"prompt\":\"p\"}\n",
	`{"id":"j1","prompt":"p"} x`, `{"id":"j1","prompt":"p",}`, `{"id":"j1","prompt":"p"`, `{"id":"j1" "prompt":"p"}`,
	`{"id":"j1","prompt":"p"}` + "\x00", "\ufeff" + `{"id":"j1","prompt":"p"}`, `{"id":"j1","prompt":"p"}` + "\v",
	`{"ID":"j1","prompt":"p"}`, `{"id":"j1","Prompt":"p"}`, `{"i\u0064":"j1","prompt":"p"}`, `{"id":"j\u0031","prompt":"p"}`,
	`{"id":"j1","prompt":"p","id":"j2"}`, `{"id":"j1","prompt":"p","prompt":"q"}`, `{"id":null,"prompt":"p"}`,
	`{"id":"j1","prompt":null}`, `{"id":"j1","prompt":"\u0000"}`, `{"id":"j1","prompt":"` + "\x01" + `"}`,
	`{"id":"j1","prompt":"\ud800"}`, `{"id":"j1","prompt":"` + "\xff" + `"}`, `{"id":"j1","prompt":"` + "\xc3" + `"}`,
	`{"id":"j1","prompt":"\x"}`, `{"id":"j1","prompt":"\u12"}`, `{"id":"j1","prompt":"\u00a0"}`, `{"id":"j1","prompt":"` + "\u00a0\u2028" + `"}`,
	`{"id":"j1","prompt":" "}`, `{"id":"j1","prompt":""}`, `{"id":"j1","prompt":"\t.\n"}`, `{"id":"` + strings.Repeat("a", 129) + `","prompt":"p"}`,
	job(`"schema":"jetpilot.job.v1"`), job(`"schema":"jetpilot.job.v2"`), job(`"schema":null`), job(`"schema":"jetpilot.job.v1 "`),
	job(`"profile":"a_b-C9"`), job(`"profile":"a.b"`), job(`"profile":""`), job(`"profile":"` + strings.Repeat("p", 64) + `"`),
	job(`"profile":"` + strings.Repeat("p", 65) + `"`), job(`"profile":"é"`),
	job(`"timeout":"1h30m"`), job(`"timeout":"0s"`), job(`"timeout":"-1s"`), job(`"timeout":"1"`), job(`"timeout":""`), job(`"timeout":".5s"`),
	job(`"timeout":"` + strings.Repeat("1", 63) + `s"`), job(`"timeout":"1ns` + strings.Repeat(" ", 62) + `"`), job(`"timeout":"1µs"`),
	job(`"workdir":""`), job(`"workdir":"` + strings.Repeat("w", 4096) + `"`), job(`"workdir":"` + strings.Repeat("é", 2049) + `"`),
	job(`"model":"` + strings.Repeat("m", 257) + `"`), job(`"model":"` + strings.Repeat("é", 200) + `"`),
	job(`"sandbox":true`), job(`"sandbox":false`), job(`"sandbox":tru`), job(`"sandbox":truee`), job(`"sandbox":null`), job(`"sandbox":1`),
	job(`"pause_on_approval":true,"sandbox":true,"sandbox":false`),
	job(`"allowed_tools":[]`), job(`"allowed_tools":[ ]`), job(`"allowed_tools":["a",]`), job(`"allowed_tools":[,"a"]`),
	job(`"allowed_tools":["a""b"]`), job(`"allowed_tools":[""]`), job(`"allowed_tools":[null]`), job(`"allowed_tools":["a","a"]`),
	job(`"allowed_tools":["` + strings.Repeat("t", 256) + `"]`), job(`"allowed_tools":["` + strings.Repeat("t", 257) + `"]`),
	job(`"allowed_tools":[` + strings.TrimSuffix(strings.Repeat(`"t",`, 1024), ",") + `]`),
	job(`"allowed_tools":[` + strings.TrimSuffix(strings.Repeat(`"t",`, 1025), ",") + `]`),
	job(`"caller_context":[{"name":"n","content":""}]`), job(`"caller_context":[{"content":"c","name":"n","priority":""}]`),
	job(`"caller_context":[{"name":"n"}]`), job(`"caller_context":[{"content":"c"}]`), job(`"caller_context":[{"name":"","content":"c"}]`),
	job(`"caller_context":[{"name":"n","content":"c","name":"m"}]`), job(`"caller_context":[{}]`), job(`"caller_context":[null]`),
	job(`"caller_context":[{"name":"n","content":"c","priority":null}]`), job(`"caller_context":[{"name":"n","content":"c","x":1}]`),
	job(contextItems(32, 1)), job(contextItems(33, 1)), job(contextItems(10, 50_000)), job(contextItems(11, 50_000)),
	job(`"caller_context":[{"name":"n","content":"` + strings.Repeat("é", 30_000) + `"}]`),
	job(`"overrides":{}`), job(`"overrides":null`), job(`"overrides":{"model":"m","system_prompt":"s"}`), job(`"overrides":{"model":"m","model":"m"}`),
	job(`"overrides":{"max_turns":1}`), job(`"overrides":{"max_turns":256}`), job(`"overrides":{"max_turns":257}`), job(`"overrides":{"max_turns":0}`),
	job(`"overrides":{"max_turns":01}`), job(`"overrides":{"max_turns":-1}`), job(`"overrides":{"max_turns":1.0}`), job(`"overrides":{"max_turns":1e2}`),
	job(`"overrides":{"max_turns":1000}`), job(`"overrides":{"max_turns":12 }`), job(`"overrides":{"max_turns":12-}`), job(`"overrides":{"max_turns":"12"}`),
	job(`"overrides":{"max_turns":2,"max_turns":3}`), job(`"overrides":{"auto_approve":"all"}`), job(`"overrides":{"auto_approve":"none"}`),
	job(`"overrides":{"auto_approve":"All"}`), job(`"overrides":{"auto_approve":[]}`), job(`"overrides":{"auto_approve":["v",""]}`),
	job(`"overrides":{"auto_approve":null}`), job(`"overrides":{"auto_approve":"al\u006c"}`), job(`"overrides":{"system_prompt":"` + strings.Repeat("s", 32_769) + `"}`),
	job(`"metadata":{}`), job(`"metadata":{"a":"b","c":""}`), job(`"metadata":{"a":"b","a":"c"}`), job(`"metadata":{"a":"b","\u0061":"c"}`),
	job(`"metadata":{"":"x"}`), job(`"metadata":{"a":null}`), job(`"metadata":{"a":1}`), job(`"metadata":{"é":"ü"}`), job(`"metadata":{"` + "\xff" + `":"x"}`),
	job(`"metadata":{"` + strings.Repeat("k", 256) + `":"x"}`), job(`"metadata":{"` + strings.Repeat("k", 257) + `":"x"}`),
	job(`"metadata":{"` + strings.Repeat("é", 200) + `":"x"}`), job(`"metadata":{"a":"` + strings.Repeat("v", 8193) + `"}`),
	job(`"metadata":` + metadataOf(64)), job(`"metadata":` + metadataOf(65)), job(`"metadata":{"a":"b",}`), job(`"metadata":{"a" "b"}`),
	job(`"extra":1`), job(`"nested":{"id":"x"}`),
	job(`"requested_by":"a"`), job(`"requested_by":"ci-bot@example.com"`), job(`"requested_by":"` + strings.Repeat("r", 128) + `"`),
	job(`"requested_by":"` + strings.Repeat("r", 129) + `"`), job(`"requested_by":""`), job(`"requested_by":"a b"`), job(`"requested_by":"é"`),
	job(`"requested_by":"a:b"`), job(`"requested_by":null`), job(`"requested_by":"a","requested_by":"b"`), job(`"requested_by":"a"`),
	job(`"session_key":"slack-C1-17_0"`), job(`"session_key":"` + strings.Repeat("k", 128) + `"`), job(`"session_key":"` + strings.Repeat("k", 129) + `"`),
	job(`"session_key":""`), job(`"session_key":"a:b"`), job(`"session_key":"a b"`), job(`"session_key":1`), job(`"session_key":"a","session_key":"a"`),
	job(`"concurrency_key":"env:prod"`), job(`"concurrency_key":"` + strings.Repeat("c", 129) + `"`), job(`"concurrency_key":"a.b"`),
	job(`"concurrency_key":""`), job(`"concurrency_key":null`), job(`"session_key":"t","concurrency_key":"env:prod"`),
	job(`"signature":` + sigMember("U"+strings.Repeat("A", 55), strings.Repeat("a", 84)+"_-")),
	job(`"signature":` + sigMember("U"+strings.Repeat("A", 54)+"1", strings.Repeat("a", 86))),
	job(`"signature":` + sigMember("U"+strings.Repeat("A", 55), strings.Repeat("a", 85)+"=")),
	job(`"signature":` + sigMember("U"+strings.Repeat("A", 55), strings.Repeat("a", 85))),
	job(`"signature":` + sigMember("A"+strings.Repeat("A", 55), strings.Repeat("a", 86))),
	job(`"signature":{"sig":"` + strings.Repeat("a", 86) + `","key":"U` + strings.Repeat("A", 55) + `"}`),
	job(`"signature":{"key":"U` + strings.Repeat("A", 55) + `"}`), job(`"signature":{}`), job(`"signature":null`), job(`"signature":"x"`),
	job(`"signature":{"key":"U` + strings.Repeat("A", 55) + `","sig":"` + strings.Repeat("a", 86) + `","key":"U` + strings.Repeat("B", 55) + `"}`),
	job(`"signature":{"key":"U` + strings.Repeat("A", 55) + `","sig":"` + strings.Repeat("a", 86) + `","alg":"x"}`),
	job(`"signature":{"key":"UA` + strings.Repeat("A", 54) + `","sig":"` + strings.Repeat("a", 86) + `"}`),
	job(`"signature":` + sigMember("U"+strings.Repeat("A", 55), strings.Repeat("a", 86)) + `,"signature":` + sigMember("U"+strings.Repeat("A", 55), strings.Repeat("a", 86))),
}

func sigMember(key, sig string) string {
	return `{"key":"` + key + `","sig":"` + sig + `"}`
}

func metadataOf(n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = `"k` + strconv.Itoa(i) + `":"v"`
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// TestJobFastPathDifferential replays every job document the other tests
// use, the fuzz corpora, the examples and the edge cases above, with
// single-byte deletions and substitutions of the small ones, and checks
// the fast path against the full validation on each.
func TestJobFastPathDifferential(t *testing.T) {
	var mu sync.Mutex
	var docs [][]byte
	testHookDecodeJob = func(data []byte) {
		mu.Lock()
		docs = append(docs, append([]byte(nil), data...))
		mu.Unlock()
	}
	// The existing tests, unchanged: their documents are recorded as they
	// run (through the fast path as well).
	for name, test := range map[string]func(*testing.T){
		"Invalid": TestDecodeJobInvalid, "EveryProblem": TestDecodeJobEveryProblem, "Capped": TestDecodeJobProblemsAreCapped,
		"Partial": TestDecodeJobPartial, "Valid": TestDecodeJobValid, "Full": TestDecodeJobFull,
		"Concurrent": TestDecodeJobConcurrent, "Deterministic": TestDecodeJobDeterministic,
	} {
		t.Run(name, test)
	}
	testHookDecodeJob = nil
	require.Greater(t, len(docs), 100)

	for _, s := range jobFuzzSeeds {
		docs = append(docs, []byte(s))
	}
	for _, s := range fastPathEdgeCases {
		docs = append(docs, []byte(s))
	}
	docs = append(docs, fuzzCorpus(t, "FuzzDecodeJob")...)
	docs = append(docs, fuzzCorpus(t, "FuzzDecodeDecision")...)
	docs = append(docs, exampleFiles(t)...)

	seen := map[string]bool{}
	fast, total := 0, 0
	check := func(data []byte) {
		if seen[string(data)] {
			return
		}
		seen[string(data)] = true
		total++
		if requireFastImpliesFull(t, data) {
			fast++
		}
	}
	subs := []byte{'"', '\\', ' ', '0', '9', '}', ']', ',', ':', 'I', 'x', 0x00, 0x80, 0xff}
	for _, d := range docs {
		check(d)
		if len(d) > 600 {
			continue
		}
		for i := range d {
			check(append(append([]byte(nil), d[:i]...), d[i+1:]...))
			if testing.Short() {
				continue
			}
			for _, c := range subs {
				m := append([]byte(nil), d...)
				m[i] = c
				check(m)
			}
		}
	}
	t.Logf("%d distinct documents, %d taken by the fast path", total, fast)
	assert.Greater(t, fast, 100, "the fast path should take the common valid jobs")
}

// TestJobFastPathTakesCommonJobs: the ordinary valid jobs do not pay for
// full validation, and the doubtful ones go to it.
func TestJobFastPathTakesCommonJobs(t *testing.T) {
	t.Parallel()
	for _, file := range []string{"examples/job-full.json", "examples/job-minimal.json", "examples/job-signed.json"} {
		data, err := os.ReadFile(file)
		require.NoError(t, err)
		_, ok := fastDecodeJob(data)
		assert.True(t, ok, file)
	}
	for _, doc := range []string{
		`{"id":"j1","prompt":"Résumé 🚀 \u2028 <b>","metadata":{"thread":"1712345678.000100","user":"Zoë"}}`,
		job(`"caller_context":[{"name":"n","content":"` + strings.Repeat("é", 20_000) + `"}]`),
		job(`"overrides":{"auto_approve":"all","max_turns":256}`),
		job(`"requested_by":"ci-bot@example.com","signature":` + sigMember("U"+strings.Repeat("A", 55), strings.Repeat("a", 84)+"_-")),
	} {
		_, ok := fastDecodeJob([]byte(doc))
		assert.True(t, ok, "%.200s", doc)
	}
	for _, doc := range []string{
		job(`"overrides":{"max_turns":1.0}`), `{"i\u0064":"j1","prompt":"p"}`,
		job(`"workdir":"` + strings.Repeat("é", 2049) + `"`),
	} {
		_, ok := fastDecodeJob([]byte(doc))
		assert.False(t, ok, "%.200s", doc)
		_, err := DecodeJob([]byte(doc))
		require.NoError(t, err, "valid, through the full path: %.200s", doc)
	}
}

// FuzzJobFastPath: whatever the fast path accepts, the full validation
// accepts too, as the same Job; DecodeJob answers as the full path does.
func FuzzJobFastPath(f *testing.F) {
	for _, d := range exampleFiles(f) {
		f.Add(d)
	}
	for _, d := range fuzzCorpus(f, "FuzzDecodeJob") {
		f.Add(d)
	}
	for _, s := range append(append([]string(nil), jobFuzzSeeds...), fastPathEdgeCases...) {
		if len(s) < 4096 {
			f.Add([]byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		requireFastImpliesFull(t, data)
	})
}
