package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// GetMsgFromLeader reads a message of stream through the JetStream API
// (STREAM.MSG.GET, answered by the stream's leader), never by a direct get
// (which any replica answers, from its own possibly lagging copy): seq, or
// with nextBySubject the first message at or after seq on that subject.
// A replica behind the leader may not have a message yet, or may still
// have one the leader removed; the key coordination (a job's turn, a
// holder's liveness) must see what the leader sees. A stream with
// AllowDirect (JOBS has it, for listings) would make jetstream.Stream's
// GetMsg a direct get. jetstream.ErrMsgNotFound when there is none.
func GetMsgFromLeader(ctx context.Context, js jetstream.JetStream, stream string, seq uint64, nextBySubject string) (*jetstream.RawStreamMsg, error) {
	req, err := json.Marshal(struct {
		Seq     uint64 `json:"seq,omitempty"`
		NextFor string `json:"next_by_subj,omitempty"`
	}{seq, nextBySubject})
	if err != nil {
		return nil, fmt.Errorf("get message %d of %s: %w", seq, stream, err)
	}
	msg, err := js.Conn().RequestWithContext(ctx, apiPrefix(js)+"STREAM.MSG.GET."+stream, req)
	if err != nil {
		return nil, fmt.Errorf("get message %d of %s: %w", seq, stream, err)
	}
	var resp struct {
		Error   *jetstream.APIError `json:"error"`
		Message *struct {
			Subject  string `json:"subject"`
			Sequence uint64 `json:"seq"`
			Data     []byte `json:"data"`
		} `json:"message"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, fmt.Errorf("get message %d of %s: decode the answer: %w", seq, stream, err)
	}
	if resp.Error != nil {
		if resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return nil, jetstream.ErrMsgNotFound
		}
		return nil, fmt.Errorf("get message %d of %s: %w", seq, stream, resp.Error)
	}
	if resp.Message == nil {
		return nil, fmt.Errorf("get message %d of %s: %w", seq, stream, errors.New("the answer has no message"))
	}
	return &jetstream.RawStreamMsg{Subject: resp.Message.Subject, Sequence: resp.Message.Sequence, Data: resp.Message.Data}, nil
}

// apiPrefix is the JetStream API subject prefix js uses ("$JS.API.", or a
// domain's or an explicit one), ending in a dot.
func apiPrefix(js jetstream.JetStream) string {
	o := js.Options()
	switch {
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	}
	return "$JS.API."
}
