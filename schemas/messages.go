package schemas

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

// The schema files carry x-* annotations (ignored by validators) that make
// the messages below specific without hard-coding field names in Go:
//
//	x-hint           what a valid value looks like: "must be <hint> (got ...)"
//	x-limit-owner    whose limit a max is: "over the agent server's limit of N"
//	x-max-bytes      the limit is in UTF-8 bytes, not characters
//	x-required-hint  replaces "is required" (conditional requirements)
//	x-one-of         the property names of a oneOf of required-only branches
//	x-not-hint       replaces the generic message of a "not"
//	x-key-hint       what keys an object allows, next to patternProperties
//	                 entries that are false (used instead of propertyNames,
//	                 whose errors carry an unreliable instance path)

// maxQuoted bounds how much of a bad value a message repeats.
const maxQuoted = 40

var fallbackPrinter = message.NewPrinter(language.English)

// problems flattens a validation error tree into one FieldError per
// concrete failure, worded for people rather than echoing the library.
func (s *compiledSchema) problems(err error, doc any) []FieldError {
	var verr *jsonschema.ValidationError
	if !errors.As(err, &verr) {
		return []FieldError{{Reason: err.Error()}}
	}
	var out []FieldError
	s.walk(verr, doc, &out, 0)
	return out
}

// maxDepth bounds the walk; the schemas nest far less than this.
const maxDepth = 64

func (s *compiledSchema) walk(e *jsonschema.ValidationError, doc any, out *[]FieldError, depth int) {
	if depth > maxDepth {
		return
	}
	switch e.ErrorKind.(type) {
	case *kind.Schema, *kind.Group, *kind.Reference, *kind.AllOf:
		for _, c := range e.Causes {
			s.walk(c, doc, out, depth+1)
		}
		return
	}
	*out = append(*out, s.describe(e, doc)...)
}

// describe words one failure. Its field is the instance location as a path
// without the leading slash ("caller_context/2/content"; "" for the root).
func (s *compiledSchema) describe(e *jsonschema.ValidationError, doc any) []FieldError {
	path := pointer(e.InstanceLocation)
	node := s.node(e.SchemaURL)
	value := lookup(doc, e.InstanceLocation)
	one := func(reason string) []FieldError { return []FieldError{{Field: path, Reason: reason}} }

	switch k := e.ErrorKind.(type) {
	case *kind.Type:
		if hint := str(node, "x-hint"); hint != "" {
			return one(fmt.Sprintf("must be %s (got %s)", hint, typeName(value)))
		}
		want := make([]string, len(k.Want))
		for i, w := range k.Want {
			want[i] = withArticle(w)
		}
		if path == "" && slices.Equal(k.Want, []string{"object"}) {
			want = []string{"a JSON object"}
		}
		return one(fmt.Sprintf("must be %s (got %s)", strings.Join(want, " or "), typeName(value)))

	case *kind.Required:
		hint := str(node, "x-required-hint")
		if hint == "" {
			hint = "is required"
		}
		out := make([]FieldError, 0, len(k.Missing))
		for _, m := range k.Missing {
			out = append(out, FieldError{Field: join(path, m), Reason: hint})
		}
		return out

	case *kind.AdditionalProperties:
		known := propertyNames(node)
		out := make([]FieldError, 0, len(k.Properties))
		for _, p := range k.Properties {
			reason := "unknown field " + quote(p)
			if guess := closest(p, known); guess != "" {
				reason += fmt.Sprintf(" (did you mean %q?)", guess)
			}
			out = append(out, FieldError{Field: path, Reason: reason})
		}
		return out

	case *kind.MinLength:
		if k.Want == 1 {
			return one("must not be empty")
		}
		return one(fmt.Sprintf("must be at least %s characters (got %s)", count(k.Want), count(k.Got)))

	case *kind.MaxLength:
		if limit, ok := num(node, "x-max-bytes"); ok {
			v, _ := value.(string)
			return one(overBytes(len(v), limit))
		}
		return one(fmt.Sprintf("%s characters, over %s limit of %s", count(k.Got), limitOwner(node), count(k.Want)))

	case *kind.Pattern:
		v, _ := value.(string)
		return one(patternReason(str(node, "x-hint"), k.Want, v))

	case *kind.Enum:
		if hint := str(node, "x-hint"); hint != "" {
			return one(fmt.Sprintf("must be %s (got %s)", hint, describeValue(value)))
		}
		want := make([]string, len(k.Want))
		for i, w := range k.Want {
			want[i] = describeValue(w)
		}
		return one(fmt.Sprintf("must be one of %s (got %s)", strings.Join(want, ", "), describeValue(value)))

	case *kind.Const:
		return one(fmt.Sprintf("must be %s (got %s)", describeValue(k.Want), describeValue(value)))

	case *kind.Minimum, *kind.Maximum:
		return one(rangeReason(node, value))
	case *kind.ExclusiveMinimum:
		return one(fmt.Sprintf("must be greater than %s (got %s)", ratString(k.Want), describeValue(value)))
	case *kind.ExclusiveMaximum:
		return one(fmt.Sprintf("must be less than %s (got %s)", ratString(k.Want), describeValue(value)))

	case *kind.MinItems:
		if k.Want == 1 {
			return one("must not be empty")
		}
		return one(fmt.Sprintf("must have at least %s items (got %s)", count(k.Want), count(k.Got)))
	case *kind.MaxItems:
		return one(fmt.Sprintf("%s items, over %s limit of %s", count(k.Got), limitOwner(node), count(k.Want)))

	case *kind.MinProperties:
		if k.Want == 1 {
			return one("must not be empty")
		}
		return one(fmt.Sprintf("must have at least %s entries (got %s)", count(k.Want), count(k.Got)))
	case *kind.MaxProperties:
		return one(fmt.Sprintf("%s entries, over %s limit of %s", count(k.Got), limitOwner(node), count(k.Want)))

	case *kind.PropertyNames:
		// The schemas use patternProperties instead: the library reuses
		// the instance location of this error, so its path is unreliable.
		return []FieldError{{Reason: fmt.Sprintf("key %s is not allowed", quote(k.Property))}}

	case *kind.OneOf:
		names := strs(node, "x-one-of")
		if len(names) == 0 {
			return one("must match exactly one of the allowed forms")
		}
		quoted := make([]string, len(names))
		for i, n := range names {
			quoted[i] = strconv.Quote(n)
		}
		list := strings.Join(quoted, " or ")
		if len(k.Subschemas) > 1 {
			return one(fmt.Sprintf("must have exactly one of %s, not both", list))
		}
		return one(fmt.Sprintf("must have one of %s", list))

	case *kind.Not:
		if hint := str(node, "x-not-hint"); hint != "" {
			return one(hint)
		}
		return one("is not allowed in this form")

	case *kind.Format:
		if k.Want == "date-time" {
			return one(fmt.Sprintf(`must be an RFC 3339 date-time such as "2025-01-02T15:04:05Z" (got %s)`, describeValue(value)))
		}
		return one(fmt.Sprintf("must be a valid %s (got %s)", k.Want, describeValue(value)))

	case *kind.InvalidJsonValue:
		if h, ok := k.Value.(hugeNumber); ok {
			return one(fmt.Sprintf("number %s is out of range (at most %d characters and an exponent of ±%d)",
				describeValue(h), maxNumberLen, maxNumberExponent))
		}

	case *kind.FalseSchema:
		// A key a patternProperties entry forbids: a problem of the
		// object, worded by its x-key-hint.
		base, frag, _ := strings.Cut(e.SchemaURL, "#")
		if parent, _, ok := strings.Cut(frag, "/patternProperties/"); ok && len(e.InstanceLocation) > 0 {
			key := e.InstanceLocation[len(e.InstanceLocation)-1]
			reason := fmt.Sprintf("key %s is not allowed", quote(key))
			if hint := str(s.node(base+"#"+parent), "x-key-hint"); hint != "" {
				reason += fmt.Sprintf(": keys must be %s (got %s)", hint, charCount(key))
			}
			return []FieldError{{Field: pointer(e.InstanceLocation[:len(e.InstanceLocation)-1]), Reason: reason}}
		}
		return one("is not allowed")
	}
	return one(e.ErrorKind.LocalizedString(fallbackPrinter))
}

// node finds the raw schema object an error's SchemaURL points at, for its
// x-* annotations. nil when it is not one of ours.
func (s *compiledSchema) node(schemaURL string) map[string]any {
	base, frag, _ := strings.Cut(schemaURL, "#")
	var doc any
	if base == s.url {
		doc = s.doc
	} else if other, ok := registry.schemas[strings.TrimSuffix(strings.TrimPrefix(base, schemaBaseURL), ".v1.json")]; ok && other.url == base {
		doc = other.doc
	} else {
		return nil
	}
	var loc []string
	for tok := range strings.SplitSeq(strings.TrimPrefix(frag, "/"), "/") {
		if tok != "" {
			loc = append(loc, strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~"))
		}
	}
	m, _ := lookup(doc, loc).(map[string]any)
	return m
}

// lookup returns the value at loc in doc, or nil.
func lookup(doc any, loc []string) any {
	for _, tok := range loc {
		switch d := doc.(type) {
		case map[string]any:
			doc = d[tok]
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(d) {
				return nil
			}
			doc = d[i]
		default:
			return nil
		}
	}
	return doc
}

// pointer renders an instance location as a path without the leading
// slash, escaping "~" and "/" in keys as JSON Pointer does.
func pointer(loc []string) string {
	var b strings.Builder
	for i, tok := range loc {
		if i > 0 {
			b.WriteByte('/')
		}
		b.WriteString(escapeToken(tok))
	}
	return b.String()
}

func escapeToken(tok string) string {
	if !strings.ContainsAny(tok, "~/") {
		return tok
	}
	return strings.ReplaceAll(strings.ReplaceAll(tok, "~", "~0"), "/", "~1")
}

func join(path, name string) string {
	if path == "" {
		return escapeToken(name)
	}
	return path + "/" + escapeToken(name)
}

func str(node map[string]any, key string) string {
	s, _ := node[key].(string)
	return s
}

func strs(node map[string]any, key string) []string {
	list, _ := node[key].([]any)
	out := make([]string, 0, len(list))
	for _, v := range list {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func num(node map[string]any, key string) (int, bool) {
	n, ok := node[key].(json.Number)
	if !ok {
		return 0, false
	}
	i, err := n.Int64()
	return int(i), err == nil
}

func limitOwner(node map[string]any) string {
	if owner := str(node, "x-limit-owner"); owner != "" {
		return owner
	}
	return "the"
}

func propertyNames(node map[string]any) []string {
	props, _ := node["properties"].(map[string]any)
	names := make([]string, 0, len(props))
	for name := range props {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// overBytes words a byte-size limit, e.g. for the 1 MiB prompt.
func overBytes(got, limit int) string {
	r := fmt.Sprintf("%s bytes, over the limit of %s bytes", count(got), count(limit))
	if limit%(1<<20) == 0 {
		r += fmt.Sprintf(" (%d MiB)", limit>>20)
	} else if limit%(1<<10) == 0 {
		r += fmt.Sprintf(" (%d KiB)", limit>>10)
	}
	return r
}

// rangeReason words a minimum/maximum failure using both bounds when the
// schema has both: "must be between 1 and 256 (got 300)".
func rangeReason(node map[string]any, got any) string {
	g := describeValue(got)
	lo, hasLo := node["minimum"].(json.Number)
	hi, hasHi := node["maximum"].(json.Number)
	what := "a number"
	if t, _ := node["type"].(string); t == "integer" {
		what = "an integer"
	}
	switch {
	case hasLo && hasHi:
		return fmt.Sprintf("must be %s between %s and %s (got %s)", what, lo, hi, g)
	case hasLo:
		return fmt.Sprintf("must be at least %s (got %s)", lo, g)
	case hasHi:
		return fmt.Sprintf("must be at most %s (got %s)", hi, g)
	}
	return fmt.Sprintf("is out of range (got %s)", g)
}

func ratString(r *big.Rat) string {
	if r == nil {
		return "?"
	}
	if r.IsInt() {
		return r.Num().String()
	}
	return r.FloatString(6)
}

// simplePattern matches the patterns the schemas use for identifiers,
// ^[class]{min,max}$, so a failure can say what exactly is wrong.
var simplePattern = regexp.MustCompile(`^\^\[([^\]]+)\]\{(\d+),(\d+)\}\$$`)

func patternReason(hint, pattern, v string) string {
	if hint == "" {
		hint = "a string matching " + pattern
	}
	m := simplePattern.FindStringSubmatch(pattern)
	if m == nil {
		return fmt.Sprintf("must be %s (got %s)", hint, quote(v))
	}
	lo, _ := strconv.Atoi(m[2])
	hi, _ := strconv.Atoi(m[3])
	n := utf8.RuneCountInString(v)
	switch {
	case n < lo || n > hi:
		return fmt.Sprintf("must be %s (got %s)", hint, charCount(v))
	}
	class, err := regexp.Compile("^[" + m[1] + "]$")
	if err == nil {
		for _, r := range v {
			if !class.MatchString(string(r)) {
				return fmt.Sprintf("must be %s (got %s: %s is not allowed)", hint, quote(v), describeRune(r))
			}
		}
	}
	return fmt.Sprintf("must be %s (got %s)", hint, quote(v))
}

func describeRune(r rune) string {
	switch {
	case r == ' ':
		return "a space"
	case r == utf8.RuneError:
		return "an invalid character"
	case r < 0x20 || r == 0x7f:
		return fmt.Sprintf("control character %U", r)
	}
	return strconv.QuoteRune(r)
}

func withArticle(t string) string {
	switch t {
	case "null":
		return "null"
	case "object", "array", "integer":
		return "an " + t
	}
	return "a " + t
}

// typeName names a JSON value's type for "(got ...)".
func typeName(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number, hugeNumber:
		return "a number"
	case float64, int, int64:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// describeValue shows a scalar briefly, and names composite values.
func describeValue(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		return quote(v)
	case json.Number:
		return cut(string(v))
	case hugeNumber:
		return cut(string(v))
	case bool, float64, int, int64:
		return fmt.Sprint(v)
	}
	return typeName(v)
}

// cut shortens s to maxQuoted characters, marking the cut.
func cut(s string) string {
	if utf8.RuneCountInString(s) <= maxQuoted {
		return s
	}
	return string([]rune(s)[:maxQuoted]) + "…"
}

// quote quotes s, cut to maxQuoted characters so a bad 1 MiB value does
// not end up in every message.
func quote(s string) string {
	if utf8.RuneCountInString(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	runes := []rune(s)
	return strconv.Quote(string(runes[:maxQuoted])) + "…"
}

// charCount words a string's length: "an empty string", "300 characters".
func charCount(s string) string {
	n := utf8.RuneCountInString(s)
	if n == 0 {
		return "an empty string"
	}
	return count(n) + " characters"
}

// count formats n with thousands separators: 50,001.
func count(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// closest suggests the known name nearest to s when it looks like a typo:
// a different case, or at most two edits away (one for short names).
func closest(s string, known []string) string {
	if len(s) > 64 {
		return ""
	}
	best, bestDist := "", 0
	for _, k := range known {
		if strings.EqualFold(s, k) {
			return k
		}
		d := editDistance(s, k)
		if d == 0 || d > 2 || d > max(1, len(k)/3) {
			continue
		}
		if best == "" || d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance over bytes
// (Levenshtein plus adjacent transpositions, so "modle" is one edit from
// "model"); inputs are short.
func editDistance(a, b string) int {
	rows := make([][]int, len(a)+1)
	for i := range rows {
		rows[i] = make([]int, len(b)+1)
		rows[i][0] = i
	}
	for j := range rows[0] {
		rows[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d := min(rows[i-1][j]+1, rows[i][j-1]+1, rows[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d = min(d, rows[i-2][j-2]+1)
			}
			rows[i][j] = d
		}
	}
	return rows[len(a)][len(b)]
}
