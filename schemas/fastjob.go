package schemas

import (
	"encoding/json"
	"strings"
	"unicode/utf8"
)

// The job fast path.
//
// Full validation (JSON into map[string]any, then the JSON Schema validator)
// is what makes rejections readable, but it costs tens of microseconds per
// job. fastDecodeJob decodes the common, clearly valid job directly, in one
// pass over the bytes, and answers ok=false at the first doubt: any syntax,
// member, type or value it does not positively recognise as valid. DecodeJob
// then runs the full validation, which accepts or explains. So the fast path
// may only ever accept a subset of what the full path accepts, and must
// build the very Job jobFromDoc would. FuzzJobFastPath and
// TestJobFastPathDifferential hold it to that.
//
// What it refuses to decide, leaving it to the full path:
//   - duplicate members anywhere (the full path rejects them);
//   - member names with escapes, in another case, or unknown;
//   - null, and any value of a type the schema does not allow;
//   - numbers other than max_turns written as a plain integer 1-256
//     (no sign, fraction, exponent or leading zero);
//   - raw control characters in strings (invalid JSON);
//   - strings whose length in bytes exceeds a character limit (in
//     characters they may still fit; the full path counts them);
//   - metadata keys that are empty or over 256 bytes.
//
// Strings with escapes or invalid UTF-8 are decoded by encoding/json itself,
// exactly as the full path decodes them.

// Top-level members, as bits, to find duplicates and the required ones.
const (
	fjSchema = 1 << iota
	fjID
	fjPrompt
	fjProfile
	fjTimeout
	fjWorkdir
	fjModel
	fjSandbox
	fjPause
	fjAllowedTools
	fjCallerContext
	fjOverrides
	fjMetadata
	fjRequestedBy
	fjSignature
	fjSessionKey
	fjConcurrencyKey
)

// Character limits of the job schema, applied here to byte lengths: a
// string of at most n bytes has at most n characters.
const (
	maxTimeoutLen       = 64
	maxWorkdirLen       = 4096
	maxModelLen         = 256
	maxToolNameLen      = 256
	maxToolList         = 1024
	maxContextItems     = 32
	maxContextNameLen   = 256
	maxContextLen       = 50_000
	maxPriorityLen      = 64
	maxSystemPromptLen  = 32_768
	maxMaxTurns         = 256
	maxMetadataProps    = 64
	maxMetadataKeyLen   = 256
	maxMetadataValueLen = 8192
)

type fastParser struct {
	b []byte
	i int
}

func (p *fastParser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// eat skips whitespace, then consumes c if it comes next.
func (p *fastParser) eat(c byte) bool {
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// rawString consumes a string token and returns its bytes between the
// quotes, whether it has escapes, and whether it has bytes above 0x7f.
func (p *fastParser) rawString() (raw []byte, escaped, high, ok bool) {
	p.ws()
	if p.i >= len(p.b) || p.b[p.i] != '"' {
		return nil, false, false, false
	}
	start := p.i + 1
	for i := start; i < len(p.b); i++ {
		switch c := p.b[i]; {
		case c == '"':
			p.i = i + 1
			return p.b[start:i], escaped, high, true
		case c == '\\':
			escaped = true
			i++ // the escaped byte; encoding/json checks the escape itself
		case c < 0x20:
			return nil, false, false, false
		case c >= 0x80:
			high = true
		}
	}
	return nil, false, false, false
}

// str consumes a string and decodes it as encoding/json does.
func (p *fastParser) str() (string, bool) {
	start := p.i
	raw, escaped, high, ok := p.rawString()
	if !ok {
		return "", false
	}
	if escaped || (high && !utf8.Valid(raw)) {
		// Escapes and invalid UTF-8 (which becomes U+FFFD): let
		// encoding/json decode the token, exactly as the full path does.
		tok := p.b[start:p.i]
		var s string
		if err := json.Unmarshal(tok, &s); err != nil {
			return "", false
		}
		return s, true
	}
	return string(raw), true
}

// strMax is str with a limit in bytes.
func (p *fastParser) strMax(maxLen int) (string, bool) {
	s, ok := p.str()
	return s, ok && len(s) <= maxLen
}

// name consumes a member name and the colon after it. Names with escapes
// are refused: no valid job needs them.
func (p *fastParser) name() ([]byte, bool) {
	raw, escaped, _, ok := p.rawString()
	if !ok || escaped || !p.eat(':') {
		return nil, false
	}
	p.ws()
	return raw, true
}

// boolean consumes true or false.
func (p *fastParser) boolean() (bool, bool) {
	rest := p.b[p.i:]
	switch {
	case len(rest) >= 4 && string(rest[:4]) == "true":
		p.i += 4
		return true, true
	case len(rest) >= 5 && string(rest[:5]) == "false":
		p.i += 5
		return false, true
	}
	return false, false
}

// smallInt consumes a plain integer 1-999: a nonzero digit and at most two
// more, not followed by anything that would make it another number.
func (p *fastParser) smallInt() (int, bool) {
	n, i := 0, p.i
	for ; i < len(p.b) && i-p.i < 4; i++ {
		c := p.b[i]
		if c < '0' || c > '9' {
			break
		}
		if i == p.i && c == '0' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if i == p.i || i-p.i > 3 {
		return 0, false
	}
	if i < len(p.b) {
		switch p.b[i] {
		case '.', 'e', 'E':
			return 0, false
		}
	}
	p.i = i
	return n, true
}

// members walks an object's members: the opening brace, then member for
// each name (positioned at its value), until the closing brace.
func (p *fastParser) members(member func(name []byte) bool) bool {
	if !p.eat('{') {
		return false
	}
	if p.eat('}') {
		return true
	}
	for {
		name, ok := p.name()
		if !ok || !member(name) {
			return false
		}
		if p.eat(',') {
			continue
		}
		return p.eat('}')
	}
}

// elements walks an array: elem for each element, at most maxItems.
func (p *fastParser) elements(maxItems int, elem func() bool) bool {
	if !p.eat('[') {
		return false
	}
	if p.eat(']') {
		return true
	}
	for n := 1; ; n++ {
		if n > maxItems {
			return false
		}
		p.ws()
		if !elem() {
			return false
		}
		if p.eat(',') {
			continue
		}
		return p.eat(']')
	}
}

// toolList reads an array of tool names; empty gives nil, like stringList.
func (p *fastParser) toolList() ([]string, bool) {
	var out []string
	ok := p.elements(maxToolList, func() bool {
		s, ok := p.strMax(maxToolNameLen)
		out = append(out, s)
		return ok && s != ""
	})
	return out, ok
}

// fastDecodeJob decodes data when it is, beyond doubt, a valid job; see
// the comment at the top of this file. ok=false means "ask the full path",
// not "invalid".
func fastDecodeJob(data []byte) (j Job, ok bool) {
	p := fastParser{b: data}
	var seen uint32
	ok = p.members(func(name []byte) bool {
		var bit uint32
		ok := false
		switch string(name) {
		case "schema":
			bit = fjSchema
			j.Schema, ok = p.str()
			ok = ok && j.Schema == JobSchemaID
		case "id":
			bit = fjID
			j.ID, ok = p.str()
			ok = ok && ValidJobID(j.ID)
		case "prompt":
			bit = fjPrompt
			j.Prompt, ok = p.strMax(MaxPromptBytes)
			ok = ok && strings.TrimSpace(j.Prompt) != ""
		case "profile":
			bit = fjProfile
			j.Profile, ok = p.str()
			ok = ok && ValidProfile(j.Profile)
		case "timeout":
			bit = fjTimeout
			j.Timeout, ok = p.strMax(maxTimeoutLen)
			ok = ok && j.Timeout != "" && timeoutProblem(j.Timeout) == ""
		case "workdir":
			bit = fjWorkdir
			j.Workdir, ok = p.strMax(maxWorkdirLen)
		case "model":
			bit = fjModel
			j.Model, ok = p.strMax(maxModelLen)
		case "sandbox":
			bit = fjSandbox
			j.Sandbox, ok = p.boolean()
		case "pause_on_approval":
			bit = fjPause
			j.PauseOnApproval, ok = p.boolean()
		case "allowed_tools":
			bit = fjAllowedTools
			j.AllowedTools, ok = p.toolList()
		case "caller_context":
			bit = fjCallerContext
			j.CallerContext, ok = p.callerContext()
		case "overrides":
			bit = fjOverrides
			j.Overrides, ok = p.overrides()
		case "metadata":
			bit = fjMetadata
			j.Metadata, ok = p.metadata()
		case "requested_by":
			bit = fjRequestedBy
			j.RequestedBy, ok = p.str()
			ok = ok && ValidRequester(j.RequestedBy)
		case "signature":
			bit = fjSignature
			j.Signature, ok = p.signature()
		case "session_key":
			bit = fjSessionKey
			j.SessionKey, ok = p.str()
			ok = ok && ValidSessionKey(j.SessionKey)
		case "concurrency_key":
			bit = fjConcurrencyKey
			j.ConcurrencyKey, ok = p.str()
			ok = ok && ValidConcurrencyKey(j.ConcurrencyKey)
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
		return true
	})
	p.ws()
	if !ok || p.i != len(data) || seen&(fjID|fjPrompt) != fjID|fjPrompt {
		return Job{}, false
	}
	return j, true
}

func (p *fastParser) callerContext() ([]ContextItem, bool) {
	var out []ContextItem
	total := 0
	ok := p.elements(maxContextItems, func() bool {
		var ci ContextItem
		var seen uint8
		ok := p.members(func(name []byte) bool {
			var bit uint8
			ok := false
			switch string(name) {
			case "name":
				bit = 1
				ci.Name, ok = p.strMax(maxContextNameLen)
				ok = ok && ci.Name != ""
			case "content":
				bit = 2
				ci.Content, ok = p.strMax(maxContextLen)
			case "priority":
				bit = 4
				ci.Priority, ok = p.strMax(maxPriorityLen)
			}
			if !ok || seen&bit != 0 {
				return false
			}
			seen |= bit
			return true
		})
		total += utf8.RuneCountInString(ci.Content)
		out = append(out, ci)
		return ok && seen&3 == 3
	})
	return out, ok && total <= MaxContextTotalChars
}

func (p *fastParser) overrides() (*Overrides, bool) {
	o := &Overrides{}
	var seen uint8
	ok := p.members(func(name []byte) bool {
		var bit uint8
		ok := false
		switch string(name) {
		case "model":
			bit = 1
			o.Model, ok = p.strMax(maxModelLen)
		case "system_prompt":
			bit = 2
			o.SystemPrompt, ok = p.strMax(maxSystemPromptLen)
		case "max_turns":
			bit = 4
			o.MaxTurns, ok = p.smallInt()
			ok = ok && o.MaxTurns >= 1 && o.MaxTurns <= maxMaxTurns
		case "auto_approve":
			bit = 8
			if p.i < len(p.b) && p.b[p.i] == '[' {
				var tools []string
				tools, ok = p.toolList()
				o.AutoApprove = &AutoApprove{Mode: AutoApproveList, Tools: tools}
			} else {
				var mode string
				mode, ok = p.str()
				ok = ok && (mode == AutoApproveAll || mode == AutoApproveNone)
				o.AutoApprove = &AutoApprove{Mode: mode}
			}
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
		return true
	})
	return o, ok
}

func (p *fastParser) metadata() (map[string]string, bool) {
	if !p.eat('{') {
		return nil, false
	}
	if p.eat('}') {
		return nil, true // empty gives nil, like stringMap
	}
	out := make(map[string]string)
	for {
		key, ok := p.str()
		if !ok || key == "" || len(key) > maxMetadataKeyLen || !p.eat(':') {
			return nil, false
		}
		if _, dup := out[key]; dup || len(out) == maxMetadataProps {
			return nil, false
		}
		p.ws()
		v, ok := p.strMax(maxMetadataValueLen)
		if !ok {
			return nil, false
		}
		out[key] = v
		if p.eat(',') {
			continue
		}
		return out, p.eat('}')
	}
}

// signature reads {"key":...,"sig":...}, both required, both of the
// shapes the schema's patterns state, nothing else. The fast path decodes
// the member only; whether the signature is good is package signing's
// business, on the raw bytes.
func (p *fastParser) signature() (*Signature, bool) {
	var sig Signature
	var seen uint8
	ok := p.members(func(name []byte) bool {
		var bit uint8
		ok := false
		switch string(name) {
		case "key":
			bit = 1
			sig.Key, ok = p.str()
		case "sig":
			bit = 2
			sig.Sig, ok = p.str()
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
		return true
	})
	if !ok || seen != 3 || !ValidSignatureShape(sig) {
		return nil, false
	}
	return &sig, true
}
