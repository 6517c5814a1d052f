package schemas

import (
	"bytes"
	"encoding/json"
)

// Encode is v as JSON without HTML escaping. json.Marshal writes each <, >
// and & as six bytes, so a message full of them (shell redirects, HTML)
// would grow up to six times past what was measured: every message and
// request jetpilot sends is encoded with this instead.
func Encode(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}
