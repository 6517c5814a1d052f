package agentsim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/google/uuid"
)

// The real server decodes bodies with axum's Json extractor and serde, and
// answers what they reject itself, in plain text: 415 without a JSON
// content type, 413 over the body limit, 400 for JSON that does not parse,
// 422 for JSON of the wrong shape (a missing field, a wrong type, an
// unknown enum value). obj and its accessors reproduce that: member names
// are exact (case-sensitive), unknown members are ignored, and null is the
// same as absent for optional fields.

// obj is a decoded JSON object.
type obj map[string]json.RawMessage

const (
	syntaxPrefix = "Failed to parse the request body as JSON: "
	dataPrefix   = "Failed to deserialize the JSON body into the target type: "
)

// dataErr is a 422 rejection naming the field path.
func dataErr(path, format string, args ...any) *plainError {
	msg := fmt.Sprintf(format, args...)
	if path != "" {
		msg = path + ": " + msg
	}
	return plainf(http.StatusUnprocessableEntity, "%s%s", dataPrefix, msg)
}

// decodeBody applies the Json extractor's checks, in its order, and
// returns the body as an object.
func decodeBody(r *http.Request) (obj, *plainError) {
	if !jsonContentType(r.Header.Get("Content-Type")) {
		return nil, plainf(http.StatusUnsupportedMediaType, "Expected request with `Content-Type: application/json`")
	}
	if bodyTooBig(r) {
		return nil, plainf(http.StatusRequestEntityTooLarge, "Failed to buffer the request body: length limit exceeded")
	}
	body := requestBody(r)
	var raw any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		return nil, plainf(http.StatusBadRequest, "%s%v", syntaxPrefix, err)
	}
	if dec.More() || trailing(dec) {
		return nil, plainf(http.StatusBadRequest, "%strailing characters", syntaxPrefix)
	}
	if _, ok := raw.(map[string]any); !ok {
		return nil, dataErr("", "invalid type: %s, expected a struct", jsonKind(raw))
	}
	var o obj
	if err := json.Unmarshal(body, &o); err != nil {
		return nil, plainf(http.StatusBadRequest, "%s%v", syntaxPrefix, err)
	}
	return o, nil
}

// trailing reports whether anything but white space follows the value.
func trailing(dec *json.Decoder) bool {
	var rest bytes.Buffer
	_, _ = rest.ReadFrom(dec.Buffered())
	return len(bytes.TrimSpace(rest.Bytes())) > 0
}

func jsonContentType(v string) bool {
	mt, _, err := mime.ParseMediaType(v)
	if err != nil {
		return false
	}
	typ, sub, ok := strings.Cut(mt, "/")
	return ok && typ == "application" && (sub == "json" || strings.HasSuffix(sub, "+json"))
}

func jsonKind(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean `" + strconv.FormatBool(x) + "`"
	case string:
		return fmt.Sprintf("string %q", x)
	case json.Number, float64:
		return fmt.Sprintf("number `%v`", x)
	case []any:
		return "sequence"
	default:
		return "map"
	}
}

// value returns the member, or nil when it is absent or null.
func (o obj) value(name string) json.RawMessage {
	raw, ok := o[name]
	if !ok || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return nil
	}
	return raw
}

// str reads a string member. required: absent is an error (null too: a
// required String is never null).
func (o obj) str(path, name string, required bool) (*string, *plainError) {
	raw, present := o[name]
	if !present {
		if required {
			return nil, dataErr(path, "missing field `%s`", name)
		}
		return nil, nil
	}
	if o.value(name) == nil { // null
		if !required {
			return nil, nil
		}
		return nil, dataErr(join(path, name), "invalid type: null, expected a string")
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, dataErr(join(path, name), "invalid type: %s, expected a string", kindOf(raw))
	}
	return &s, nil
}

// uuidStr reads a UUID member and returns it in canonical form.
func (o obj) uuidStr(path, name string, required bool) (*string, *plainError) {
	s, e := o.str(path, name, required)
	if e != nil || s == nil {
		return nil, e
	}
	id, err := uuid.Parse(*s)
	if err != nil {
		return nil, dataErr(join(path, name), "UUID parsing failed: %v", err)
	}
	c := id.String()
	return &c, nil
}

// boolean reads an optional bool member.
func (o obj) boolean(path, name string) (*bool, *plainError) {
	raw := o.value(name)
	if raw == nil {
		return nil, nil
	}
	var b bool
	if err := json.Unmarshal(raw, &b); err != nil {
		return nil, dataErr(join(path, name), "invalid type: %s, expected a boolean", kindOf(raw))
	}
	return &b, nil
}

// usize reads an optional unsigned integer member (a negative number is a
// 422, like serde's usize).
func (o obj) usize(path, name string) (*uint64, *plainError) {
	raw := o.value(name)
	if raw == nil {
		return nil, nil
	}
	n, err := strconv.ParseUint(string(bytes.TrimSpace(raw)), 10, 64)
	if err != nil {
		return nil, dataErr(join(path, name), "invalid value: %s, expected usize", kindOf(raw))
	}
	return &n, nil
}

// object reads an object member; nil when absent or null (or, required,
// an error).
func (o obj) object(path, name string, required bool) (obj, *plainError) {
	raw := o.value(name)
	if raw == nil {
		if required {
			if _, present := o[name]; present {
				return nil, dataErr(join(path, name), "invalid type: null, expected a struct")
			}
			return nil, dataErr(path, "missing field `%s`", name)
		}
		return nil, nil
	}
	var m obj
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, dataErr(join(path, name), "invalid type: %s, expected a struct", kindOf(raw))
	}
	return m, nil
}

// array reads an optional array member.
func (o obj) array(path, name string) ([]json.RawMessage, bool, *plainError) {
	raw := o.value(name)
	if raw == nil {
		return nil, false, nil
	}
	var a []json.RawMessage
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, false, dataErr(join(path, name), "invalid type: %s, expected a sequence", kindOf(raw))
	}
	return a, true, nil
}

// enum reads a string member that must be one of values.
func (o obj) enum(path, name string, required bool, def string, values ...string) (string, *plainError) {
	s, e := o.str(path, name, required)
	if e != nil {
		return "", e
	}
	if s == nil {
		return def, nil
	}
	for _, v := range values {
		if *s == v {
			return v, nil
		}
	}
	return "", dataErr(join(path, name), "unknown variant `%s`, expected one of `%s`", *s, strings.Join(values, "`, `"))
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func kindOf(raw json.RawMessage) string {
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if dec.Decode(&v) != nil {
		return "value"
	}
	return jsonKind(v)
}

// canonical encodes v (maps, slices, strings, numbers) as compact JSON with
// sorted keys: how the real server compares bodies for Idempotency-Key.
func canonical(v any) []byte {
	b, err := marshal(v)
	if err != nil {
		return nil
	}
	var x any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if dec.Decode(&x) != nil {
		return b
	}
	out, err := marshal(x) // maps marshal with sorted keys
	if err != nil {
		return b
	}
	return out
}

// rawValue decodes raw JSON for a canonical body.
func rawValue(raw json.RawMessage) any {
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if dec.Decode(&v) != nil {
		return nil
	}
	return v
}

// pathUUID parses a path segment the way axum's Path<Uuid> does: 400 in
// plain text when it is not a UUID.
func pathUUID(r *http.Request, name string) (string, *plainError) {
	v := r.PathValue(name)
	id, err := uuid.Parse(v)
	if err != nil {
		return "", plainf(http.StatusBadRequest, "Invalid URL: Cannot parse `%s` with value `%s` to a `Uuid`", name, v)
	}
	return id.String(), nil
}
