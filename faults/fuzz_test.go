package faults

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
)

// fuzzSeed is the seed of TestHostileInput's mutations: JETPILOT_FUZZ_SEED,
// or a fixed default so every run of the suite sends the same bytes.
func fuzzSeed(t *testing.T) uint64 { return envSeed(t, "JETPILOT_FUZZ_SEED", 13) }

// envSeed is a hostile scenario's seed: the variable env, or def so every
// run sends the same choices.
func envSeed(t *testing.T, env string, def uint64) uint64 {
	t.Helper()
	s := os.Getenv(env)
	if s == "" {
		return def
	}
	v, err := strconv.ParseUint(s, 10, 64)
	require.NoError(t, err, env)
	return v
}

// mutant is one hostile message, published as raw bytes (a careless
// producer or bot on core NATS, not queue.Client, which validates first).
type mutant struct {
	n       int
	kind    string
	subject string
	msgID   string // Nats-Msg-Id header, "" for none
	body    []byte
	tag     string // "[id]" in the prompt of a job that may run, else ""
	seq     uint64 // stream sequence, from the publish ack
	// knownBug: a decision whose decision_error event is too large to
	// publish (see knownUnfittedEvent).
	knownBug bool
}

// knownUnfittedEvent: worker/settle.go settleRefuse publishes the
// decision_error event with queue.PublishEvent, which does not fit its
// message to the limit (publishJSON: ErrTooLarge), and the event echoes the
// decision's approval_id whole, however long and invalid. A decision with a
// readable job_id and an approval_id of just under 1 MiB, or of ~350 KB of
// invalid UTF-8 (each byte becomes a 3-byte U+FFFD), is terminated with
// only the "decision refused" and "publish decision error event" log lines:
// no answer on the job's events subject. Set to false once settleRefuse
// fits (or caps the approval id of) its event: the test then requires the
// events.
const knownUnfittedEvent = false

// fuzzGen makes mutants, deterministically from its seed.
type fuzzGen struct {
	r     *rand.Rand
	limit int      // largest body: just under the 1 MiB message limit
	real  []string // real jobs' ids, for decisions that name them
	jobs  []string // mutated jobs' readable ids so far
}

func newFuzzGen(seed uint64, real []string) *fuzzGen {
	return &fuzzGen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), limit: 1<<20 - 512, real: real}
}

func (g *fuzzGen) pick(xs ...string) string { return xs[g.r.IntN(len(xs))] }
func (g *fuzzGen) between(lo, hi int) int   { return lo + g.r.IntN(hi-lo+1) }

// js is s as a JSON string, '<', '>' and '&' left as they are.
func js(s string) string {
	b, err := queue.Encode(s)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// filler is n bytes of one hostile alphabet, as JSON string content
// (escapes included, so it is ready to go between quotes).
func (g *fuzzGen) filler(n int) string {
	switch g.r.IntN(6) {
	case 0:
		return strings.Repeat("x", n)
	case 1:
		return strings.Repeat("<", n/2) + strings.Repeat(">", n/4) + strings.Repeat("&", n-n/2-n/4)
	case 2:
		return strings.Repeat(`\u0001`, n/6) // control characters, escaped
	case 3:
		return strings.Repeat("é", n/2) // 2-byte runes
	case 4:
		return strings.Repeat(`\"\\`, n/4) // escapes of quotes and backslashes
	default:
		return strings.Repeat("<&\\u0007>", n/10)
	}
}

// jobKinds are the mutations of a job; each returns the body and
// optionally another subject (profile) or a Nats-Msg-Id.
var jobKinds = []struct {
	name string
	make func(g *fuzzGen, id, tag string) (body, subject, msgID string)
}{
	{"deep nesting in a field", func(g *fuzzGen, id, tag string) (string, string, string) {
		d := g.between(100, 200_000)
		open, closing := g.pick("[", `{"a":`), "]"
		if open != "[" {
			closing = "}"
		}
		return fmt.Sprintf(`{"id":%s,"prompt":%s,"%s":%s%s}`, js(id), js(tag), g.pick("metadata", "overrides", "caller_context", "x"),
			strings.Repeat(open, d), strings.Repeat(closing, g.pick2(d, d/2))), "", ""
	}},
	{"deep nesting at the top", func(g *fuzzGen, id, tag string) (string, string, string) {
		d := g.between(100, 500_000)
		return strings.Repeat(g.pick("[", "{\"id\":"), d), "", ""
	}},
	{"huge prompt (valid)", func(g *fuzzGen, id, tag string) (string, string, string) {
		head := fmt.Sprintf(`{"id":%s,"timeout":"1m","prompt":"%s `, js(id), tag)
		return head + g.filler(g.between(64<<10, g.limit-len(head)-16)) + `"}`, "", ""
	}},
	{"huge unknown field", func(g *fuzzGen, id, tag string) (string, string, string) {
		big := g.filler(g.between(64<<10, g.limit-300))
		if g.r.IntN(2) == 0 {
			return fmt.Sprintf(`{"id":%s,"prompt":%s,"%s":1}`, js(id), js(tag), big), "", ""
		}
		return fmt.Sprintf(`{"id":%s,"prompt":%s,"note":"%s"}`, js(id), js(tag), big), "", ""
	}},
	{"huge id", func(g *fuzzGen, id, tag string) (string, string, string) {
		return fmt.Sprintf(`{"prompt":%s,"id":"%s"}`, js(tag), g.filler(g.between(129, g.limit-200))), "", ""
	}},
	{"huge metadata value", func(g *fuzzGen, id, tag string) (string, string, string) {
		return fmt.Sprintf(`{"id":%s,"prompt":%s,"metadata":{"k":"%s"}}`, js(id), js(tag), g.filler(g.between(8193, g.limit-300))), "", ""
	}},
	{"invalid UTF-8", func(g *fuzzGen, id, tag string) (string, string, string) {
		bad := g.pick("\xff", "\xc3\x28", "\xe2\x82", "\xed\xa0\x80", "\xf8\x88\x80\x80\x80", `\ud800`, `\udfff\ud800`)
		switch g.r.IntN(4) {
		case 0: // in the prompt: decoded as U+FFFD, a valid job
			return fmt.Sprintf(`{"id":%s,"timeout":"1m","prompt":"%s %s"}`, js(id), tag, strings.Repeat(bad, g.between(1, 1000))), "", ""
		case 1:
			return fmt.Sprintf(`{"prompt":%s,"id":"%s%s"}`, js(tag), id, bad), "", ""
		case 2:
			return fmt.Sprintf(`{"id":%s,"prompt":%s,"metadata":{"%s":"v"}}`, js(id), js(tag), bad), "", ""
		}
		return fmt.Sprintf(`{"id":%s,"prompt":%s}%s`, js(id), js(tag), bad), "", ""
	}},
	{"NUL bytes", func(g *fuzzGen, id, tag string) (string, string, string) {
		switch g.r.IntN(4) {
		case 0:
			return fmt.Sprintf(`{"id":%s,"prompt":"%s %s"}`, js(id), tag, strings.Repeat("\x00", g.between(1, 5000))), "", ""
		case 1: // escaped: a valid job
			return fmt.Sprintf(`{"id":%s,"timeout":"1m","prompt":"%s %s"}`, js(id), tag, strings.Repeat(`\u0000`, g.between(1, 5000))), "", ""
		case 2:
			return fmt.Sprintf(`{"id":%s,"prompt":%s}%s`, js(id), js(tag), strings.Repeat("\x00", g.between(1, 100))), "", ""
		}
		return fmt.Sprintf("\x00"+`{"id":%s,"prompt":%s}`, js(id), js(tag)), "", ""
	}},
	{"BOM", func(g *fuzzGen, id, tag string) (string, string, string) {
		switch g.r.IntN(3) {
		case 0:
			return fmt.Sprintf("\xef\xbb\xbf"+`{"id":%s,"prompt":%s}`, js(id), js(tag)), "", ""
		case 1: // inside the prompt: a valid job
			return fmt.Sprintf(`{"id":%s,"timeout":"1m","prompt":"%s `+"\xef\xbb\xbf"+`"}`, js(id), tag), "", ""
		}
		return fmt.Sprintf(`{"prompt":%s,"id":"\ufeff%s"}`, js(tag), id), "", ""
	}},
	{"duplicate keys", func(g *fuzzGen, id, tag string) (string, string, string) {
		switch g.r.IntN(5) {
		case 0: // the last id counts: a valid job
			return fmt.Sprintf(`{"id":%s,"timeout":"1m","prompt":%s,"id":%s}`, js(id+"-first"), js(tag), js(id)), "", ""
		case 1:
			return fmt.Sprintf(`{"id":%s,"prompt":%s,"prompt":""}`, js(id), js(tag)), "", ""
		case 2: // the last id is bad: no readable id
			return fmt.Sprintf(`{"id":%s,"prompt":%s,"id":"bad id"}`, js(id), js(tag)), "", ""
		case 3:
			return fmt.Sprintf(`{"id":%s,"timeout":"1m","prompt":%s,"metadata":{"k":"a","k":"b"},"timeout":"2m"}`, js(id), js(tag)), "", ""
		}
		return fmt.Sprintf(`{"id":%s,"prompt":%s,"overrides":{"max_turns":3,"max_turns":"x"}}`, js(id), js(tag)), "", ""
	}},
	{"not an object", func(g *fuzzGen, id, tag string) (string, string, string) {
		return g.pick(``, ` `, "\n\t", `[]`, fmt.Sprintf(`[{"id":%s,"prompt":"p"}]`, js(id)), `42`, `-0.0e+999`,
			`"`+id+`"`, `null`, `true`, `{}`, `{`, `}`, `{"id"}`, `{"id":}`), "", ""
	}},
	{"escape amplification", func(g *fuzzGen, id, tag string) (string, string, string) {
		n := g.between(1000, 8192)
		switch g.r.IntN(4) {
		case 0: // a valid job whose prompt is all '<', '>', '&'
			return fmt.Sprintf(`{"id":%s,"timeout":"1m","prompt":"%s %s"}`, js(id), tag, strings.Repeat(g.pick("<", ">", "&", "<&>"), g.between(1000, 300_000))), "", ""
		case 1: // metadata of escaped control characters: 6 bytes each encoded
			return fmt.Sprintf(`{"id":%s,"timeout":"1m","prompt":%s,"metadata":{"a":"%s"}}`, js(id), js(tag), strings.Repeat(`\u0001`, n/3)), "", ""
		case 2:
			return fmt.Sprintf(`{"id":%s,"timeout":"1m","prompt":%s,"metadata":{"a":"%s","b":"%s"}}`, js(id), js(tag), strings.Repeat("<", n), strings.Repeat("&", n)), "", ""
		}
		// an unknown field named with them: the rejection names it
		return fmt.Sprintf(`{"id":%s,"prompt":%s,"%s":0}`, js(id), js(tag), strings.Repeat(`<\u0002&>`, g.between(1000, 100_000))), "", ""
	}},
	{"wrong types", func(g *fuzzGen, id, tag string) (string, string, string) {
		field := g.pick("id", "prompt", "timeout", "pause_on_approval", "allowed_tools", "metadata", "overrides", "caller_context", "sandbox", "schema", "profile", "model", "workdir")
		val := g.pick(`42`, `-1e999`, `123456789012345678901234567890123456789`, `true`, `null`, `[]`, `[1,2]`, `{}`, `{"a":1}`, `"x"`, `""`)
		return fmt.Sprintf(`{"id":%s,"prompt":%s,%s:%s}`, js(id), js(tag), js(field), val), "", ""
	}},
	{"unknown fields", func(g *fuzzGen, id, tag string) (string, string, string) {
		var b strings.Builder
		fmt.Fprintf(&b, `{"id":%s,"prompt":%s`, js(id), js(tag))
		for i := range g.between(1, 20_000) {
			fmt.Fprintf(&b, `,"f%d_%x":%d`, i, g.r.Uint32(), i)
		}
		return b.String() + "}", "", ""
	}},
	{"bad id", func(g *fuzzGen, id, tag string) (string, string, string) {
		switch g.r.IntN(3) {
		case 0: // odd but valid ids: the job runs
			return fmt.Sprintf(`{"id":%s,"timeout":"1m","prompt":%s}`, js(g.pick("."+id, id+".", strings.Replace(id, "-", "..", 1), strings.ReplaceAll(id, "-", ":"), "invalid-9"+id[len(id)-4:]+"0000")), js(tag)), "", ""
		case 1: // an unreadable id with a valid Nats-Msg-Id: the result is under the header's id
			return fmt.Sprintf(`{"id":"%s bad","prompt":%s}`, id, js(tag)), "", id + "-hdr"
		}
		bad := g.pick(``, ` `, `a b`, `fz/j`, `fz*`, `>`, strings.Repeat("y", 129), `é`, `\u0000`, `fz\nj`, `fz.*`, `fz>`, `\t`)
		return fmt.Sprintf(`{"id":"%s","prompt":%s}`, bad, js(tag)), "", ""
	}},
	{"oversized metadata", func(g *fuzzGen, id, tag string) (string, string, string) {
		// Around the 16 KiB cap: about half fit.
		total := g.between(policy.MaxMetadataBytes-3000, policy.MaxMetadataBytes+3000)
		var kv []string
		for i := 0; total > 0 && i < 64; i++ {
			n := min(total, 8000)
			kv = append(kv, fmt.Sprintf(`"k%d":"%s"`, i, strings.Repeat(g.pick("v", "<"), n)))
			total -= n + 8
		}
		return fmt.Sprintf(`{"id":%s,"timeout":"1m","prompt":%s,"metadata":{%s}}`, js(id), js(tag), strings.Join(kv, ",")), "", ""
	}},
	{"truncated", func(g *fuzzGen, id, tag string) (string, string, string) {
		full := fmt.Sprintf(`{"id":%s,"prompt":%s,"timeout":"1m","metadata":{"a":"b"},"allowed_tools":["view"]}`, js(id), js(tag))
		return full[:g.between(1, len(full)-1)], "", ""
	}},
	{"byte flips", func(g *fuzzGen, id, tag string) (string, string, string) {
		head := fmt.Sprintf(`{"id":%s,`, js(id))
		rest := []byte(fmt.Sprintf(`"prompt":%s,"timeout":"1m","overrides":{"max_turns":5},"metadata":{"a":"b"},"allowed_tools":["view"]}`, js(tag)))
		for range g.between(1, 4) {
			// Never in the prompt's tag, so a job that still runs is found.
			i := len(tag) + 12 + g.r.IntN(len(rest)-len(tag)-12)
			rest[i] = byte(g.r.IntN(256))
		}
		return head + string(rest), "", ""
	}},
	{"other profile", func(g *fuzzGen, id, tag string) (string, string, string) {
		switch g.r.IntN(3) {
		case 0: // names no profile, published on another: rejected
			return fmt.Sprintf(`{"id":%s,"prompt":%s}`, js(id), js(tag)), "jetpilot.jobs.fuzzprof", ""
		case 1: // that profile, on its subject: runs
			return fmt.Sprintf(`{"id":%s,"timeout":"1m","prompt":%s,"profile":"fuzzprof"}`, js(id), js(tag)), "jetpilot.jobs.fuzzprof", ""
		}
		return fmt.Sprintf(`{"id":%s,"prompt":%s,"profile":"a.b"}`, js(id), js(tag)), "jetpilot.jobs.a.b", ""
	}},
	{"absurd numbers", func(g *fuzzGen, id, tag string) (string, string, string) {
		n := g.pick("1e999999", "-1e-999999", strings.Repeat("9", g.between(33, 500_000)), "0."+strings.Repeat("0", 10_000)+"1", "1E400", "00")
		return fmt.Sprintf(`{"id":%s,"prompt":%s,"overrides":{"max_turns":%s}}`, js(id), js(tag), n), "", ""
	}},
	{"caller_context near its limits", func(g *fuzzGen, id, tag string) (string, string, string) {
		var items []string
		size := g.between(10_000, 16_000)
		for i := range g.between(30, 33) {
			items = append(items, fmt.Sprintf(`{"name":"c%d","content":"%s"}`, i, strings.Repeat(g.pick("c", "<"), size)))
		}
		return fmt.Sprintf(`{"id":%s,"timeout":"1m","prompt":%s,"caller_context":[%s]}`, js(id), js(tag), strings.Join(items, ",")), "", ""
	}},
}

func (g *fuzzGen) pick2(a, b int) int {
	if g.r.IntN(2) == 0 {
		return a
	}
	return b
}

// job makes mutated job n.
func (g *fuzzGen) job(n int) mutant {
	k := jobKinds[n%len(jobKinds)]
	id := fmt.Sprintf("fz-j-%04d", n)
	tag := "[" + id + "]"
	body, subject, msgID := k.make(g, id, "fuzz job "+tag)
	if subject == "" {
		subject = "jetpilot.jobs.default"
	}
	if len(body) > g.limit {
		body = body[:g.limit]
	}
	return mutant{n: n, kind: k.name, subject: subject, msgID: msgID, body: []byte(body), tag: tag}
}

// decisionKinds are the mutations of a decision; each returns the body and
// the job id of its subject.
var decisionKinds = []struct {
	name string
	make func(g *fuzzGen, id, apr string) (body, subjectJob string)
}{
	{"unknown job", func(g *fuzzGen, id, apr string) (string, string) {
		return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"all":%s,"decided_by":"fuzz"}`, js(apr), js(id), js(g.pick("allow", "deny"))), id
	}},
	{"a real job, another approval", func(g *fuzzGen, id, apr string) (string, string) {
		real := g.pick(g.real...)
		if g.r.IntN(2) == 0 {
			return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"all":"allow"}`, js(apr), js(real)), real
		}
		return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"decisions":{"call_1":{"action":"accept"},"call_2":{"action":"reject","content":"no"}}}`, js(apr), js(real)), real
	}},
	{"a mutated job", func(g *fuzzGen, id, apr string) (string, string) {
		other := id
		if len(g.jobs) > 0 {
			other = g.pick(g.jobs...)
		}
		return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"all":"deny"}`, js(apr), js(other)), other
	}},
	{"subject of another job", func(g *fuzzGen, id, apr string) (string, string) {
		return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"all":"allow"}`, js(apr), js(id+"-body")), id
	}},
	{"not an object", func(g *fuzzGen, id, apr string) (string, string) {
		return g.pick(``, ` `, `[]`, `null`, `7`, `"s"`, `true`, `{`, fmt.Sprintf(`[{"approval_id":%s,"job_id":%s,"all":"allow"}]`, js(apr), js(id))), id
	}},
	{"invalid UTF-8", func(g *fuzzGen, id, apr string) (string, string) {
		bad := g.pick("\xff", "\xc3\x28", "\xed\xa0\x80", `\ud800`)
		switch g.r.IntN(3) {
		case 0:
			return fmt.Sprintf(`{"approval_id":"%s%s","job_id":%s,"all":"allow"}`, apr, bad, js(id)), id
		case 1:
			return fmt.Sprintf(`{"approval_id":%s,"job_id":"%s%s","all":"allow"}`, js(apr), id, bad), id
		}
		return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"all":"allow","decided_by":"%s"}%s`, js(apr), js(id), bad, bad), id
	}},
	{"NUL bytes", func(g *fuzzGen, id, apr string) (string, string) {
		switch g.r.IntN(3) {
		case 0:
			return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"all":"allow","decided_by":"a`+"\x00"+`b"}`, js(apr), js(id)), id
		case 1:
			return fmt.Sprintf(`{"approval_id":"%s\u0000","job_id":%s,"all":"allow"}`, apr, js(id)), id
		}
		return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"all":"allow"}`+"\x00", js(apr), js(id)), id
	}},
	{"BOM", func(g *fuzzGen, id, apr string) (string, string) {
		return fmt.Sprintf("\xef\xbb\xbf"+`{"approval_id":%s,"job_id":%s,"all":"allow"}`, js(apr), js(id)), id
	}},
	{"deep nesting", func(g *fuzzGen, id, apr string) (string, string) {
		d := g.between(100, 300_000)
		return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"decisions":{"call_1":%s%s}}`, js(apr), js(id), strings.Repeat("[", d), strings.Repeat("]", d)), id
	}},
	{"huge strings", func(g *fuzzGen, id, apr string) (string, string) {
		big := g.filler(g.between(64<<10, g.limit-300))
		switch g.r.IntN(3) {
		case 0:
			return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"all":"allow","decided_by":"%s"}`, js(apr), js(id), big), id
		case 1: // a valid decision (content may be 1 MiB) for no run
			return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"decisions":{"call_1":{"action":"custom_result","content":"%s"}}}`, js(apr), js(id), big), id
		}
		return fmt.Sprintf(`{"job_id":%s,"all":"allow","approval_id":"%s"}`, js(id), big), id
	}},
	{"duplicate keys", func(g *fuzzGen, id, apr string) (string, string) {
		if g.r.IntN(2) == 0 {
			return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"all":"allow","job_id":%s}`, js(apr), js(id+"-first"), js(id)), id
		}
		return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"all":"allow","all":"maybe"}`, js(apr), js(id)), id
	}},
	{"wrong types", func(g *fuzzGen, id, apr string) (string, string) {
		field := g.pick("approval_id", "job_id", "all", "decisions", "decided_by", "schema")
		val := g.pick(`5`, `true`, `null`, `[]`, `{}`, `"x"`, `1e999999`)
		return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"all":"allow",%s:%s}`, js(apr), js(id), js(field), val), id
	}},
	{"unknown fields", func(g *fuzzGen, id, apr string) (string, string) {
		var b strings.Builder
		fmt.Fprintf(&b, `{"approval_id":%s,"job_id":%s,"all":"allow"`, js(apr), js(id))
		for i := range g.between(1, 5000) {
			fmt.Fprintf(&b, `,"u%d":%d`, i, i)
		}
		return b.String() + "}", id
	}},
	{"bad job id", func(g *fuzzGen, id, apr string) (string, string) {
		bad := g.pick(``, `a b`, strings.Repeat("z", 129), `fz*`, `>`, `é`)
		return fmt.Sprintf(`{"approval_id":%s,"job_id":"%s","all":"allow"}`, js(apr), bad), id
	}},
	{"both or neither", func(g *fuzzGen, id, apr string) (string, string) {
		if g.r.IntN(2) == 0 {
			return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"all":"allow","decisions":{"call_1":{"action":"accept"}}}`, js(apr), js(id)), id
		}
		return fmt.Sprintf(`{"approval_id":%s,"job_id":%s}`, js(apr), js(id)), id
	}},
	{"bad actions", func(g *fuzzGen, id, apr string) (string, string) {
		d := g.pick(`{"call_1":{"action":"maybe"}}`, `{"call_1":{"action":"custom_result"}}`, `{"call_1":{}}`, `{"":{"action":"accept"}}`, `{}`,
			`{"call_1":{"action":"accept","extra":1}}`, `{"`+strings.Repeat("c", 257)+`":{"action":"accept"}}`)
		return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"decisions":%s}`, js(apr), js(id), d), id
	}},
	{"many calls", func(g *fuzzGen, id, apr string) (string, string) {
		var calls []string
		for i := range g.pick2(1024, g.between(1025, 20_000)) {
			calls = append(calls, fmt.Sprintf(`"call_%d":{"action":"accept"}`, i))
		}
		return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"decisions":{%s}}`, js(apr), js(id), strings.Join(calls, ",")), id
	}},
	{"escape amplification", func(g *fuzzGen, id, apr string) (string, string) {
		n := g.between(1000, 150_000)
		if g.r.IntN(2) == 0 {
			return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"decisions":{"call_1":{"action":"reject","content":"%s"}}}`, js(apr), js(id), strings.Repeat(`<\u0003&>`, n)), id
		}
		return fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"all":"deny","decided_by":"%s"}`, js(apr), js(id), strings.Repeat("<>&", n)), id
	}},
	{"truncated", func(g *fuzzGen, id, apr string) (string, string) {
		full := fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"all":"allow","decided_by":"fuzz"}`, js(apr), js(id))
		return full[:g.between(1, len(full)-1)], id
	}},
	{"approval_id past the event limit", func(g *fuzzGen, id, apr string) (string, string) {
		if g.r.IntN(2) == 0 {
			return fmt.Sprintf(`{"job_id":%s,"all":"allow","approval_id":"%s"}`, js(id), strings.Repeat("x", g.limit-100)), id
		}
		return fmt.Sprintf(`{"job_id":%s,"all":"allow","approval_id":"%s"}`, js(id), strings.Repeat("\xff", g.between(360_000, 400_000))), id
	}},
	{"byte flips", func(g *fuzzGen, id, apr string) (string, string) {
		b := []byte(fmt.Sprintf(`{"approval_id":%s,"job_id":%s,"all":"allow","decided_by":"fuzz"}`, js(apr), js(id)))
		for range g.between(1, 4) {
			b[g.r.IntN(len(b))] = byte(g.r.IntN(256))
		}
		return string(b), id
	}},
}

// decision makes mutated decision n.
func (g *fuzzGen) decision(n int) mutant {
	k := decisionKinds[n%len(decisionKinds)]
	id := fmt.Sprintf("fz-d-%04d", n)
	body, subjectJob := k.make(g, id, fmt.Sprintf("apr_fuzz_%04d", n))
	if !schemas.ValidJobID(subjectJob) {
		subjectJob = id
	}
	if len(body) > g.limit {
		body = body[:g.limit]
	}
	return mutant{n: n, kind: k.name, subject: "jetpilot.decisions." + subjectJob, body: []byte(body), knownBug: k.name == "approval_id past the event limit"}
}

// decisionTarget is the job a refused decision's decision_error event goes
// to: the job of the subject it was published on, whatever its body names
// (worker/decide.go binds a decision to its subject).
func decisionTarget(subject string) string {
	id, _ := (queue.Config{}).JobIDOfSubject("decisions", subject)
	return id
}

// jobOutcome is what the worker must make of a mutated job: the id of its
// one final result (worker/job.go rejectedJobID for an invalid one) and
// whether it is a valid job, which runs, or is rejected.
func jobOutcome(m mutant) (id string, valid bool, prompt string) {
	job, err := schemas.DecodeJob(m.body)
	if err == nil && m.subject == (queue.Config{}).JobSubject(job.ProfileOrDefault()) {
		md, merr := queue.Encode(job.Metadata)
		if len(job.Metadata) == 0 || (merr == nil && len(md) <= policy.MaxMetadataBytes) {
			return job.ID, true, job.Prompt
		}
	}
	if id := schemas.JobIDOf(m.body); id != "" {
		return id, false, ""
	}
	if m.msgID != "" && schemas.ValidJobID(m.msgID) {
		return m.msgID, false, ""
	}
	return fmt.Sprintf("invalid-%d", m.seq), false, ""
}

// TestHostileInput (issue "Bounded under hostile input"): careless
// producers and bots publish mutated jobs and decisions as raw bytes on
// the jobs and decisions subjects (deep nesting, strings up to just under
// the 1 MiB message limit, invalid UTF-8, NUL bytes, a BOM, duplicate keys,
// non-objects, escape amplification, wrong types, unknown fields, bad ids,
// oversized metadata, decisions for unknown and other jobs and approvals,
// malformed decision bodies), deterministically from a logged seed, while
// real jobs (text, tools, and pauses a human approves) run on two worker
// processes. Every mutated job gets exactly one final result, under its id
// or the "invalid-<seq>" name the worker gives an unreadable one: rejected,
// or for a mutation that is still a valid job a completed one from one run.
// Every mutated decision is refused exactly once: a decision_error event on
// the job its body names, or, naming no readable job, only the worker's
// "decision refused" log line. The workers stay up, nothing is delivered
// past --max-deliver or left pending, every real job completes with its
// text, and JOBS and DECISIONS end empty.
func TestHostileInput(t *testing.T) {
	nJobs, nDecisions := load(150, 500), load(60, 200)
	nReal, nPaused := load(16, 40), load(2, 6)
	const maxDeliver = 5
	seed := fuzzSeed(t)
	t.Logf("mutation seed %d (JETPILOT_FUZZ_SEED to change)", seed)
	started := time.Now()
	e := newAgentEnv(t, agentsim.Options{})
	dir := t.TempDir()
	logs := []string{filepath.Join(dir, "w1.jsonl"), filepath.Join(dir, "w2.jsonl")}
	for _, l := range logs {
		e.startWorkers(t, 1, "--max-deliver", strconv.Itoa(maxDeliver), "--log-json", l)
	}

	// The real jobs: text, a tool the policy allows, a pause a human allows.
	var realJobs []schemas.Job
	var realIDs, pausedIDs []string
	want := map[string]string{}
	for i := range nReal {
		id := fmt.Sprintf("fz-real-%03d", i)
		j := schemas.Job{ID: id, Timeout: "2m", Prompt: fmt.Sprintf("real job [%s]\n#sim text a-%s\n#sim sleep %dms\n#sim tool stakpak__view {\"path\":\"README.md\"}\n#sim text-stream -mid-\n#sim text -z", id, id, 100*(i%8))}
		want[id] = "a-" + id + "-mid--z"
		if i < nPaused {
			j.PauseOnApproval, j.AllowedTools = true, []string{"view"}
			j.Prompt = fmt.Sprintf("real job [%s]\n#sim text a-%s\n#sim tool stakpak__run_command {\"command\":\"make deploy\"}\n#sim text -z", id, id)
			want[id] = "a-" + id + "-z"
			pausedIDs = append(pausedIDs, id)
		}
		realJobs = append(realJobs, j)
		realIDs = append(realIDs, id)
	}

	// Mutations interleaved with the real jobs, in an order the seed fixes.
	g := newFuzzGen(seed, realIDs)
	type item struct {
		job, mutant bool
		n, realJob  int
	}
	var plan []item
	for i := range nJobs {
		plan = append(plan, item{job: true, mutant: true, n: i})
	}
	for i := range nDecisions {
		plan = append(plan, item{mutant: true, n: i})
	}
	g.r.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	for i := range nReal {
		// The paused ones first, so they are paused while decisions arrive.
		at := i * len(plan) / (nReal + 1)
		if i < nPaused {
			at = i
		}
		plan = slices.Insert(plan, min(at+i, len(plan)), item{job: true, realJob: i})
	}

	var jobs, decisions []mutant
	kinds := map[string]int{}
	for _, it := range plan {
		if !it.mutant {
			e.submit(t, realJobs[it.realJob])
			continue
		}
		var m mutant
		if it.job {
			m = g.job(it.n)
		} else {
			m = g.decision(it.n)
		}
		msg := &nats.Msg{Subject: m.subject, Data: m.body, Header: nats.Header{}}
		if m.msgID != "" {
			msg.Header.Set(jetstream.MsgIDHeader, m.msgID)
		}
		ack, err := e.js.PublishMsg(e.ctx, msg)
		require.NoError(t, err, "publish %s %d (%s), %d bytes", m.subject, m.n, m.kind, len(m.body))
		m.seq = ack.Sequence
		if it.job {
			kinds["job: "+m.kind]++
			if id := schemas.JobIDOf(m.body); id != "" {
				g.jobs = append(g.jobs, id)
			}
			jobs = append(jobs, m)
		} else {
			kinds["decision: "+m.kind]++
			decisions = append(decisions, m)
		}
	}
	published := time.Since(started)
	var kindList []string
	for k, n := range kinds {
		kindList = append(kindList, fmt.Sprintf("%s x%d", k, n))
	}
	sort.Strings(kindList)
	t.Logf("published %d mutated jobs and %d mutated decisions with %d real jobs in %s: %s", len(jobs), len(decisions), nReal, published.Round(time.Millisecond), strings.Join(kindList, ", "))

	// What each mutated job must come to.
	type expect struct {
		m      mutant
		valid  bool
		prompt string
	}
	byID := map[string]expect{}
	for _, m := range jobs {
		id, valid, prompt := jobOutcome(m)
		_, dup := byID[id]
		require.False(t, dup || slices.Contains(realIDs, id), "mutated job %d (%s) has the id %q of another job", m.n, m.kind, id)
		byID[id] = expect{m, valid, prompt}
	}
	wantRefused := map[string]int{} // decision_error events, by job; "" = log only
	wantKnown := map[string]int{}   // the same, for decisions knownUnfittedEvent cannot answer
	for _, m := range decisions {
		if m.knownBug {
			wantKnown[decisionTarget(m.subject)]++
			continue
		}
		wantRefused[decisionTarget(m.subject)]++
	}
	for target := range wantKnown {
		require.NotEmpty(t, target)
		require.NotContains(t, wantRefused, target, "the known-bug decisions name jobs of their own")
	}

	decided := e.decideAll(t, pausedIDs)
	require.Len(t, decided, nPaused)

	// Settled: every job has its final result, JOBS and DECISIONS are
	// empty (work queues: a message leaves when acked or terminated) and
	// the simulator runs nothing.
	var finals map[string][]schemas.Result
	deadline := time.Now().Add(3 * time.Minute)
	for {
		finals = finalResults(e)
		missing := 0
		for id := range byID {
			if len(finals[id]) == 0 {
				missing++
			}
		}
		for _, id := range realIDs {
			if len(finals[id]) == 0 {
				missing++
			}
		}
		jl, dl := testsupport.StreamLen(e.ctx, e.js, "JETPILOT_JOBS"), testsupport.StreamLen(e.ctx, e.js, "JETPILOT_DECISIONS")
		if missing == 0 && jl == 0 && dl == 0 && e.sim.ActiveRuns() == 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "settled: %d jobs without a final result, JOBS %d, DECISIONS %d, %d runs active", missing, jl, dl, e.sim.ActiveRuns())
		select {
		case <-e.ctx.Done():
			require.FailNow(t, "test context done")
		case <-time.After(200 * time.Millisecond):
		}
	}
	elapsed := time.Since(started)

	// Mutated jobs: exactly one final result each, rejected or (valid)
	// completed from one run.
	f := figures{Jobs: len(jobs), MinRuns: 1 << 30}
	rejected, ran, validDone, validFailed, maxAttempt := 0, 0, 0, 0, 0
	statuses := map[schemas.Status]int{}
	ids := slices.Sorted(maps.Keys(byID))
	for _, id := range ids {
		x := byID[id]
		rs := finals[id]
		what := fmt.Sprintf("mutated job %d (%s) %q, %d bytes, seq %d", x.m.n, x.m.kind, id, len(x.m.body), x.m.seq)
		switch {
		case len(rs) == 0:
			f.Lost++
			t.Errorf("%s: no final result", what)
			continue
		case len(rs) > 1:
			f.Duplicates += len(rs) - 1
			t.Errorf("%s: %d final results", what, len(rs))
		}
		r := rs[0]
		statuses[r.Status]++
		maxAttempt = max(maxAttempt, r.Attempt)
		assert.LessOrEqual(t, r.Attempt, maxDeliver, "%s: attempt", what)
		if x.valid {
			ran++
			// A normal final result: completed, or failed for what the
			// agent server made of it (a wrong model, say).
			switch r.Status {
			case schemas.StatusCompleted:
				validDone++
			case schemas.StatusFailed:
				validFailed++
				assert.NotNil(t, r.Error, "%s: a failure says why", what)
			default:
				t.Errorf("%s: a valid job ended %s: %+v", what, r.Status, r.Error)
			}
			if strings.Contains(x.prompt, x.m.tag) {
				runs := e.sim.RunsForPrompt(x.m.tag)
				assert.Equal(t, 1, runs, "%s: agent runs", what)
				f.MinRuns, f.MaxRuns = min(f.MinRuns, runs), max(f.MaxRuns, runs)
			}
			continue
		}
		rejected++
		if assert.Equal(t, schemas.StatusRejected, r.Status, "%s: %+v", what, r.Error) {
			assert.NotNil(t, r.Error, "%s: the rejection says why", what)
			assert.True(t, r.DeadLettered, "%s: dead-lettered", what)
		}
		assert.Zero(t, e.sim.RunsForPrompt(x.m.tag), "%s: never reached the agent server", what)
	}

	// Real jobs: completed with their exact text, one run each.
	realDone := 0
	for _, id := range realIDs {
		rs := finals[id]
		if !assert.Len(t, rs, 1, "real job %s: final results", id) || len(rs) == 0 {
			f.Lost++
			continue
		}
		r := rs[0]
		maxAttempt = max(maxAttempt, r.Attempt)
		if assert.Equal(t, schemas.StatusCompleted, r.Status, "real job %s: %+v", id, r.Error) && assert.Equal(t, want[id], r.Stdout, "real job %s stdout", id) {
			realDone++
		}
		runs := e.sim.RunsForPrompt("[" + id + "]")
		assert.Equal(t, 1, runs, "real job %s: agent runs", id)
		f.MinRuns, f.MaxRuns = min(f.MinRuns, runs), max(f.MaxRuns, runs)
	}
	assert.Len(t, finals, len(byID)+len(realIDs), "no final result for a job nobody published")
	assert.Equal(t, ran+nReal, e.sim.RunsStarted(), "agent runs in all: one per real and valid mutated job")

	// Mutated decisions: exactly one answer each.
	gotEvents := map[string]int{}
	evMsgs, err := testsupport.ReadStream(e.ctx, e.js, "JETPILOT_EVENTS", "")
	require.NoError(t, err)
	for _, m := range evMsgs {
		var ev schemas.Event
		if json.Unmarshal(m.Data(), &ev) == nil && ev.Type == schemas.EventDecisionError {
			gotEvents[ev.JobID]++
		}
	}
	logRefused := map[string]int{}
	for _, l := range logs {
		for _, line := range logLines(t, l) {
			if line.Msg == "decision refused" {
				logRefused[line.JobID]++
			}
			if line.Attempt > 0 {
				maxAttempt = max(maxAttempt, line.Attempt)
			}
		}
	}
	answered, unanswered := 0, 0
	for target, n := range wantRefused {
		assert.Equal(t, n, logRefused[target], "decisions refused (log) for job %q", target)
		if target == "" {
			answered += min(n, logRefused[target])
			continue
		}
		answered += min(n, gotEvents[target])
		if gotEvents[target] != n {
			unanswered += max(0, n-gotEvents[target])
			t.Errorf("job %q: %d decision_error events for %d mutated decisions naming it", target, gotEvents[target], n)
		}
	}
	knownUnanswered := 0
	for target, n := range wantKnown {
		assert.Equal(t, n, logRefused[target], "decisions refused (log) for job %q", target)
		if !knownUnfittedEvent {
			wantRefused[target] = n
			answered += min(n, gotEvents[target])
			if gotEvents[target] != n {
				unanswered += max(0, n-gotEvents[target])
				t.Errorf("job %q: %d decision_error events for %d mutated decisions naming it", target, gotEvents[target], n)
			}
			continue
		}
		assert.LessOrEqual(t, gotEvents[target], n, "job %q: decision_error events", target)
		answered += gotEvents[target]
		knownUnanswered += n - gotEvents[target]
	}
	if knownUnanswered > 0 {
		t.Logf("KNOWN BUG (knownUnfittedEvent): %d decisions with an approval_id past the event limit got no decision_error event, only the log line", knownUnanswered)
	}
	for target, n := range gotEvents {
		if _, ok := wantRefused[target]; !ok && wantKnown[target] == 0 {
			t.Errorf("job %q: %d decision_error events no mutated decision asked for", target, n)
		}
	}
	noJob := wantRefused[""]

	// Nothing delivered past the budget, nothing pending, the workers up.
	redelivered := 0
	for _, st := range []string{"JETPILOT_JOBS", "JETPILOT_DECISIONS"} {
		s, err := e.js.Stream(e.ctx, st)
		require.NoError(t, err)
		si, err := s.Info(e.ctx)
		require.NoError(t, err)
		assert.Zero(t, si.State.Msgs, "%s ends empty", st)
		delivered := uint64(0)
		lister := s.ListConsumers(e.ctx)
		for ci := range lister.Info() {
			assert.Zero(t, ci.NumPending, "%s consumer %s: pending", st, ci.Name)
			assert.Zero(t, ci.NumAckPending, "%s consumer %s: awaiting an ack", st, ci.Name)
			assert.Zero(t, ci.NumRedelivered, "%s consumer %s: redelivering", st, ci.Name)
			delivered += ci.Delivered.Consumer
		}
		require.NoError(t, lister.Err())
		// Each consumer takes the whole stream: deliveries past one per
		// message are redeliveries.
		redelivered += int(delivered) - int(si.State.LastSeq)
	}
	assert.LessOrEqual(t, maxAttempt, maxDeliver, "no delivery past --max-deliver")
	for _, w := range e.workers {
		assert.True(t, w.Running(), "worker still running")
		assert.NotContains(t, w.Output(), "panic:", "worker output")
	}

	knownNote := ""
	if knownUnanswered > 0 {
		knownNote = fmt.Sprintf(" + %d answered only by the log line (known bug: decision_error event too large, approval_id of ~1 MiB or of invalid UTF-8)", knownUnanswered)
	}
	f.Scenario, f.Elapsed = "14. hostile input", elapsed
	f.Hung = f.Lost
	f.Load = fmt.Sprintf("%d real jobs (text, tools, %d paused and allowed), 2 worker processes x 8, --max-deliver %d", nReal, nPaused, maxDeliver)
	f.Faults = fmt.Sprintf("%d mutated jobs (%d kinds, seed %d): %d rejected, %d still valid (%d completed, %d failed by the agent server); %d mutated decisions (%d kinds): %d answered (%d by a decision_error event, %d naming no readable job by the log line), %d unanswered%s; max attempt %d, %d redeliveries; %d real jobs completed with their text",
		len(jobs), len(jobKinds), seed, rejected, ran, validDone, validFailed, len(decisions), len(decisionKinds), answered, answered-min(noJob, logRefused[""]), min(noJob, logRefused[""]), unanswered, knownNote, maxAttempt, redelivered, realDone)
	f.Command = "go test -race -run TestHostileInput -v ./faults/"
	if f.MinRuns > f.MaxRuns {
		f.MinRuns = f.MaxRuns
	}
	report(t, f)
}

// finalResults reads every final result on RESULTS, by job, or what it
// could read (a wait condition: it fails no test).
func finalResults(e *agentEnv) map[string][]schemas.Result {
	msgs, err := testsupport.ReadStream(e.ctx, e.js, "JETPILOT_RESULTS", "")
	out := map[string][]schemas.Result{}
	if err != nil {
		return out
	}
	for _, m := range msgs {
		var r schemas.Result
		if json.Unmarshal(m.Data(), &r) == nil && r.Status.Final() {
			out[r.JobID] = append(out[r.JobID], r)
		}
	}
	return out
}

// logLine is what TestHostileInput reads of a worker's JSON log line.
type logLine struct {
	Msg     string `json:"msg"`
	JobID   string `json:"job_id"`
	Attempt int    `json:"attempt"`
}

func logLines(t *testing.T, path string) []logLine {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var out []logLine
	for l := range bytes.SplitSeq(data, []byte{'\n'}) {
		if len(bytes.TrimSpace(l)) == 0 {
			continue
		}
		var ll logLine
		require.NoError(t, json.Unmarshal(l, &ll), "log line %.200s", l)
		out = append(out, ll)
	}
	return out
}
