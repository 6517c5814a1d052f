package signing

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// PendingDigest is the pending_digest of an approval request with these
// pending_tool_calls: the lowercase hex SHA-256 of the JCS form of the
// array exactly as the request publishes it (schemas.Encode of the calls,
// which is how every message is encoded), so a decision that repeats it is
// bound to these calls and no others. Workers publish it; approvers
// recompute it from what they were shown.
//
// It fails when the calls cannot be canonicalised: arguments the agent
// wrote with a member name twice, a lone surrogate or a number out of
// range. Nothing can be signed for such calls; they can only be denied
// unsigned or left to expire.
func PendingDigest(calls []schemas.ToolCall) (string, error) {
	if calls == nil {
		calls = []schemas.ToolCall{} // a request's "pending_tool_calls" is always an array
	}
	raw, err := schemas.Encode(calls)
	if err != nil {
		return "", fmt.Errorf("pending digest: encode the calls: %w", err)
	}
	return PendingDigestJSON(raw)
}

// PendingDigestJSON is PendingDigest of the pending_tool_calls array as
// JSON text, for instance the member as it came in an approval request:
// it then covers every member of every call, also members this version of
// jetpilot does not know.
func PendingDigestJSON(raw []byte) (string, error) {
	canon, err := Canonicalize(raw)
	if err != nil {
		return "", fmt.Errorf("pending digest: %w", err)
	}
	if canon[0] != '[' {
		return "", fmt.Errorf("pending digest: %w: pending_tool_calls must be a JSON array", ErrMalformedDocument)
	}
	sum := sha256.Sum256(canon)
	return hex.EncodeToString(sum[:]), nil
}
