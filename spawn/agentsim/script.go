package agentsim

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// defaultText is what a run says when its script has no content directive.
const defaultText = "Hello from agentsim."

// Bounds on directive arguments, so a typo cannot exhaust memory.
const (
	maxBigBytes = 256 << 20
	maxSleep    = time.Hour
	maxTurnsDir = 256
)

// script is a compiled prompt: the run's actions and its session settings.
type script struct {
	actions    []action
	turns      int    // planned turns (number of actTurnStart)
	stopReason string // run_completed stop_reason of a run that completes
	usage      *[2]int64
	ringSize   int  // 0: keep the session's
	dropAfter  int  // -1: none
	stallAfter int  // -1: none
	dieAtStart bool // "#sim die" before any content: the run never starts
}

type actionKind int

const (
	actTurnStart  actionKind = iota // top of a turn, turn_started, the inference
	actText                         // text: one text part, one text_delta
	actTextStream                   // text: one text part as ~5-byte deltas
	actBigText                      // n
	actBigFrame                     // n
	actTurnEnd                      // reason: the answer had no tool calls
	actTools                        // calls: the answer's tool calls and the tool cycle
	actSleep                        // d: inference time
	actHang                         // an executing step only cancel (or Close) ends
	actError                        // text, retryable: the inference fails
	actDie                          // the run dies silently
	actRetry                        // a failed inference attempt and its back-off
	actCompaction
	actGarbage
)

type action struct {
	kind      actionKind
	text      string
	n         int
	d         time.Duration
	reason    string
	retryable bool
	calls     []toolSpec
}

type toolSpec struct {
	name string
	args json.RawMessage
	time time.Duration // "#sim tool-time": how long an accepted call executes
}

// directive is one "#sim" line: its verb, the rest of the line, and its
// 1-based line number in the prompt.
type directive struct {
	line int
	verb string
	rest string
}

// directives returns the "#sim" lines of prompt in order.
func directives(prompt string) []directive {
	var out []directive
	for i, line := range strings.Split(prompt, "\n") {
		line = strings.TrimLeft(strings.TrimSuffix(line, "\r"), " \t")
		if line != "#sim" && !strings.HasPrefix(line, "#sim ") {
			continue
		}
		line = strings.TrimSpace(strings.TrimPrefix(line, "#sim"))
		verb, rest, _ := strings.Cut(line, " ")
		out = append(out, directive{line: i + 1, verb: verb, rest: strings.TrimSpace(rest)})
	}
	return out
}

// failSendDirective returns the "#sim fail-send N KIND" of prompt, if any.
func failSendDirective(prompt string) (int, string, bool) {
	for _, d := range directives(prompt) {
		if d.verb == "fail-send" {
			n, kind, err := parseFailSend(d.rest)
			return n, kind, err == nil
		}
	}
	return 0, "", false
}

func parseFailSend(rest string) (int, string, error) {
	f := strings.Fields(rest)
	if len(f) != 2 {
		return 0, "", fmt.Errorf("want: fail-send <n> <503|429|500|reset>")
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n < 1 {
		return 0, "", fmt.Errorf("fail-send count must be an integer >= 1, got %q", f[0])
	}
	switch f[1] {
	case Fault503, Fault429, Fault500, FaultReset:
	default:
		return 0, "", fmt.Errorf("fail-send kind must be 503, 429, 500 or reset, got %q", f[1])
	}
	return n, f[1], nil
}

// parseScript compiles the "#sim" directives of prompt (see doc.go).
// Errors name the line, so a test with a typo fails loudly.
func parseScript(prompt string) (*script, error) {
	sc := &script{stopReason: "completed", dropAfter: -1, stallAfter: -1}
	c := compiler{sc: sc, split: 1}
	ds := directives(prompt)
	hasContent := false
scan: // content after hang, error or die never runs, so it does not count
	for _, d := range ds {
		switch d.verb {
		case "text", "text-stream", "bigtext", "bigframe", "tool":
			hasContent = true
		case "die":
			if !hasContent {
				sc.dieAtStart = true
			}
			break scan
		case "hang", "error", "error-retryable":
			break scan
		}
	}
	if !hasContent && !sc.dieAtStart {
		c.text(defaultText, actText)
	}
	for i := 0; i < len(ds); i++ {
		d := ds[i]
		if d.verb == "tool" {
			// Consecutive tool lines form one proposal.
			var calls []toolSpec
			for ; i < len(ds) && ds[i].verb == "tool"; i++ {
				t, err := parseTool(ds[i])
				if err != nil {
					return nil, err
				}
				t.time = c.toolTime
				calls = append(calls, t)
			}
			i--
			c.tools(calls)
			continue
		}
		if err := c.directive(d); err != nil {
			return nil, fmt.Errorf("line %d (#sim %s): %w", d.line, d.verb, err)
		}
	}
	c.finish()
	return sc, nil
}

// compiler turns directives into actions, opening and closing turns. A
// turn is: its inference (sleep, retry, compaction, error directives),
// then its answer (text parts), then either tool calls or nothing more.
// An inference directive after answer content starts the next turn.
type compiler struct {
	sc        *script
	open      bool // a turn is open
	content   bool // the open turn has answer content
	lastTools bool // the last closed turn ended with tool calls
	split     int  // "#sim turns": text is spread over this many turns
	ended     bool // a terminal directive (hang, error, die) was compiled
	toolTime  time.Duration
}

func (c *compiler) add(a action) { c.sc.actions = append(c.sc.actions, a) }

func (c *compiler) openTurn() {
	if !c.open {
		c.sc.turns++
		c.add(action{kind: actTurnStart, n: c.sc.turns})
		c.open, c.content = true, false
	}
}

// inference opens a turn for an inference directive: a new one when the
// open turn already has answer content.
func (c *compiler) inference() {
	if c.content {
		c.closeTurn()
	}
	c.openTurn()
}

func (c *compiler) closeTurn() {
	if c.open {
		c.add(action{kind: actTurnEnd, reason: "stop"})
		c.open, c.content = false, false
		c.lastTools = false
	}
}

func (c *compiler) text(t string, kind actionKind) {
	if c.split <= 1 {
		c.openTurn()
		c.add(action{kind: kind, text: t})
		c.content = true
		return
	}
	if c.content {
		c.closeTurn()
	}
	for _, part := range splitRunes(t, c.split) {
		c.openTurn()
		c.add(action{kind: kind, text: part})
		c.closeTurn()
	}
}

func (c *compiler) tools(calls []toolSpec) {
	if c.ended {
		return
	}
	c.openTurn()
	c.add(action{kind: actTools, calls: calls})
	c.open, c.content, c.lastTools = false, false, true
}

func (c *compiler) directive(d directive) error {
	if c.ended {
		return nil // after hang, error or die nothing more happens
	}
	switch d.verb {
	case "text", "text-stream":
		if d.rest == "" {
			return fmt.Errorf("want: %s <text...>", d.verb)
		}
		kind := actText
		if d.verb == "text-stream" {
			kind = actTextStream
		}
		c.text(strings.ReplaceAll(d.rest, `\n`, "\n"), kind)
	case "bigtext", "bigframe":
		n, err := intArg(d.rest, 1, maxBigBytes)
		if err != nil {
			return err
		}
		c.openTurn()
		kind := actBigText
		if d.verb == "bigframe" {
			kind = actBigFrame
		}
		c.add(action{kind: kind, n: n})
		c.content = true
	case "sleep":
		dur, err := durationArg(d.rest)
		if err != nil {
			return err
		}
		c.inference()
		c.add(action{kind: actSleep, d: dur})
	case "tool-time":
		dur, err := durationArg(d.rest)
		if err != nil {
			return err
		}
		c.toolTime = dur
	case "hang":
		c.openTurn()
		c.add(action{kind: actHang})
		c.ended = true
	case "die":
		if !c.sc.dieAtStart {
			c.add(action{kind: actDie})
		}
		c.ended = true
	case "error", "error-retryable":
		if d.rest == "" {
			return fmt.Errorf("want: %s <message...>", d.verb)
		}
		c.inference()
		c.add(action{kind: actError, text: d.rest, retryable: d.verb == "error-retryable"})
		c.ended = true
	case "retry":
		c.inference()
		c.add(action{kind: actRetry})
	case "compaction":
		c.inference()
		c.add(action{kind: actCompaction})
	case "garbage":
		c.add(action{kind: actGarbage})
	case "usage":
		f := strings.Fields(d.rest)
		if len(f) != 2 {
			return fmt.Errorf("want: usage <prompt_tokens> <completion_tokens>")
		}
		p, err1 := strconv.ParseInt(f[0], 10, 64)
		q, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 != nil || err2 != nil || p < 0 || q < 0 {
			return fmt.Errorf("token counts must be integers >= 0, got %q", d.rest)
		}
		c.sc.usage = &[2]int64{p, q}
	case "stop":
		if d.rest == "" || strings.ContainsAny(d.rest, " \t") {
			return fmt.Errorf("want: stop <reason>")
		}
		c.sc.stopReason = d.rest
	case "fail-send":
		if _, _, err := parseFailSend(d.rest); err != nil {
			return err
		}
	case "drop-after", "stall-after":
		n, err := intArg(d.rest, 0, 1<<20)
		if err != nil {
			return err
		}
		if d.verb == "drop-after" {
			c.sc.dropAfter = n
		} else {
			c.sc.stallAfter = n
		}
	case "ring":
		n, err := intArg(d.rest, 1, 1<<20)
		if err != nil {
			return err
		}
		c.sc.ringSize = n
	case "turns":
		n, err := intArg(d.rest, 1, maxTurnsDir)
		if err != nil {
			return err
		}
		c.split = n
	default:
		return fmt.Errorf("unknown directive")
	}
	return nil
}

// finish closes the last turn; a run whose last turn asked for tools gets
// a final (empty) answer turn, as a real agent would.
func (c *compiler) finish() {
	if c.ended {
		return
	}
	if c.open {
		c.closeTurn()
		return
	}
	if c.lastTools || c.sc.turns == 0 {
		c.openTurn()
		c.closeTurn()
	}
}

func durationArg(rest string) (time.Duration, error) {
	dur, err := time.ParseDuration(rest)
	if err != nil || dur < 0 || dur > maxSleep {
		return 0, fmt.Errorf("want a Go duration in 0..%s, got %q", maxSleep, rest)
	}
	return dur, nil
}

func parseTool(d directive) (toolSpec, error) {
	name, args, _ := strings.Cut(d.rest, " ")
	args = strings.TrimSpace(args)
	if name == "" {
		return toolSpec{}, fmt.Errorf("line %d (#sim tool): want: tool <name> [json-args]", d.line)
	}
	if args == "" {
		args = "{}"
	}
	if !json.Valid([]byte(args)) {
		return toolSpec{}, fmt.Errorf("line %d (#sim tool): arguments are not valid JSON: %s", d.line, args)
	}
	return toolSpec{name: name, args: json.RawMessage(args)}, nil
}

func intArg(rest string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(rest))
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("want an integer in %d..%d, got %q", lo, hi, rest)
	}
	return n, nil
}

// splitRunes cuts s into at most n parts of about equal byte length, on
// rune boundaries; it never returns an empty part.
func splitRunes(s string, n int) []string {
	runes := []rune(s)
	if n > len(runes) {
		n = len(runes)
	}
	if n <= 1 {
		return []string{s}
	}
	out := make([]string, 0, n)
	for i := range n {
		out = append(out, string(runes[i*len(runes)/n:(i+1)*len(runes)/n]))
	}
	return out
}

// textChunks cuts s into deltas of about size bytes, on rune boundaries.
func textChunks(s string, size int) []string {
	var out []string
	start := 0
	for i := range s { // i walks rune starts
		if i-start >= size {
			out = append(out, s[start:i])
			start = i
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}
