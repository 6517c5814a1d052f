package schemas

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

//go:embed *.v1.json
var schemaFS embed.FS

// schemaBaseURL is where the schema files live; each file's $id is this plus
// its name, so references and error locations resolve without any network.
const schemaBaseURL = "https://raw.githubusercontent.com/jetpilot-dev/jetpilot/main/schemas/"

// Schema names accepted by Validate and SchemaJSON, and the kind in each
// schema id ("jetpilot.<kind>.v1").
const (
	SchemaJob      = "job"
	SchemaResult   = "result"
	SchemaApproval = "approval"
	SchemaDecision = "decision"
	SchemaEvent    = "event"
	SchemaDead     = "dead"
	// The control protocol: workers' control messages, cancel requests and
	// their replies.
	SchemaControl     = "control"
	SchemaCancel      = "cancel"
	SchemaCancelReply = "cancel_reply"
	// A steering request (its reply is a cancel_reply).
	SchemaSteer = "steer"
	// The operator's policy document (package policy).
	SchemaPolicy = "policy"
	// An entry of an audit chain (stream AUDIT).
	SchemaAudit = "audit"
)

var schemaNames = []string{SchemaJob, SchemaResult, SchemaApproval, SchemaDecision, SchemaEvent, SchemaDead,
	SchemaControl, SchemaCancel, SchemaCancelReply, SchemaSteer, SchemaPolicy, SchemaAudit}

// Names lists the embedded schemas by kind name.
func Names() []string { return slices.Clone(schemaNames) }

// compiledSchema is one embedded schema, compiled, with its raw document
// kept for the x-* hints the error messages use.
type compiledSchema struct {
	name   string
	url    string
	schema *jsonschema.Schema
	doc    any
}

var registry struct {
	once    sync.Once
	schemas map[string]*compiledSchema
	err     error
}

// schemaFor returns the compiled schema named name ("job" or
// "jetpilot.job.v1"). Every schema is compiled once, on first use, so a
// process that never validates pays nothing.
func schemaFor(name string) (*compiledSchema, error) {
	registry.once.Do(compileAll)
	if registry.err != nil {
		return nil, registry.err
	}
	kind := canonicalName(name)
	s, ok := registry.schemas[kind]
	if !ok {
		return nil, fmt.Errorf("unknown schema %q (known: %s)", name, strings.Join(schemaNames, ", "))
	}
	return s, nil
}

// canonicalName maps "jetpilot.job.v1", "job.v1.json" and "job" to "job".
func canonicalName(name string) string {
	name = strings.TrimSuffix(name, ".json")
	name = strings.TrimPrefix(name, "jetpilot.")
	return strings.TrimSuffix(name, ".v1")
}

// noLoader refuses every URL: all schemas are embedded, and validation must
// never reach for the network or the file system.
type noLoader struct{}

func (noLoader) Load(url string) (any, error) {
	return nil, fmt.Errorf("schema %s is not embedded", url)
}

func compileAll() {
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	c.UseLoader(noLoader{})
	out := make(map[string]*compiledSchema, len(schemaNames))
	for _, name := range schemaNames {
		file := name + ".v1.json"
		data, err := schemaFS.ReadFile(file)
		if err != nil {
			registry.err = fmt.Errorf("read embedded schema %s: %w", file, err)
			return
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
		if err != nil {
			registry.err = fmt.Errorf("parse embedded schema %s: %w", file, err)
			return
		}
		url := schemaBaseURL + file
		if err := c.AddResource(url, doc); err != nil {
			registry.err = fmt.Errorf("add embedded schema %s: %w", file, err)
			return
		}
		out[name] = &compiledSchema{name: name, url: url, doc: doc}
	}
	for _, s := range out {
		sch, err := c.Compile(s.url)
		if err != nil {
			registry.err = fmt.Errorf("compile embedded schema %s: %w", s.name, err)
			return
		}
		s.schema = sch
	}
	registry.schemas = out
}

// SchemaJSON returns the embedded JSON Schema document named name ("job",
// "jetpilot.job.v1" ...), for tools that publish or print the schemas.
func SchemaJSON(name string) ([]byte, error) {
	kind := canonicalName(name)
	if !slices.Contains(schemaNames, kind) {
		return nil, fmt.Errorf("unknown schema %q (known: %s)", name, strings.Join(schemaNames, ", "))
	}
	data, err := schemaFS.ReadFile(kind + ".v1.json")
	if err != nil {
		return nil, fmt.Errorf("read embedded schema %s: %w", kind, err)
	}
	return data, nil
}

// Validate checks doc against the embedded schema named schemaName ("job",
// "result", "approval", "decision", "event", "dead", "audit", any other of
// Names(), or a full id such as
// "jetpilot.result.v1"). doc is a Go value, which is marshalled first, or
// JSON text as []byte or json.RawMessage.
//
// Jobs and decisions also get the checks JSON Schema cannot express (byte
// sizes, durations, totals, member names given twice in one object), exactly as DecodeJob and DecodeDecision apply
// them. A document that breaks the rules yields a *ValidationError naming
// every problem; other errors (unknown schema, unmarshallable value) are
// plain errors.
func Validate(schemaName string, doc any) error {
	s, err := schemaFor(schemaName)
	if err != nil {
		return fmt.Errorf("validate: %w", err)
	}
	var data []byte
	switch d := doc.(type) {
	case []byte:
		data = d
	case json.RawMessage:
		data = d
	default:
		data, err = json.Marshal(doc)
		if err != nil {
			return fmt.Errorf("validate %s: marshal: %w", s.name, err)
		}
	}
	_, problems := s.check(data)
	return newValidationError(s.name, problems)
}

// check parses data and validates it against s, plus the Go-only rules of
// jobs and decisions. It returns the parsed document (nil when data is not
// JSON) and every problem found.
func (s *compiledSchema) check(data []byte) (any, []FieldError) {
	v, p := parseJSON(data)
	if p != nil {
		return nil, []FieldError{*p}
	}
	var problems []FieldError
	if err := s.schema.Validate(v); err != nil {
		problems = s.problems(err, v)
	}
	switch s.name {
	case SchemaJob:
		problems = append(problems, jobGoChecks(v, problems)...)
		problems = append(problems, duplicateKeys(data)...)
	case SchemaDecision:
		problems = append(problems, decisionGoChecks(v, problems)...)
		problems = append(problems, duplicateKeys(data)...)
	case SchemaPolicy:
		problems = append(problems, duplicateKeys(data)...)
	}
	return v, problems
}
