package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// ErrNotRequeueable: a dead letter whose job cannot be submitted again as
// it was; the error says why.
var ErrNotRequeueable = errors.New("cannot requeue")

// RequeueID is the id a dead-lettered job is requeued under (`jetpilot
// requeue`, the console): its id, ":r" and the dead letter's stream
// sequence, the id cut to fit 128 characters. Requeuing one dead letter
// twice gives one id, so JetStream's duplicate window drops the second
// submit; a job that died again has a new dead letter, and a new id.
func RequeueID(jobID string, deadSeq uint64) string {
	suffix := ":r" + strconv.FormatUint(deadSeq, 10)
	if len(jobID)+len(suffix) > schemas.MaxJobIDLen {
		jobID = jobID[:schemas.MaxJobIDLen-len(suffix)]
	}
	return jobID + suffix
}

// Requeueable says why a dead letter's job cannot be requeued, or "".
func Requeueable(dl schemas.DeadLetter) string {
	switch {
	case dl.Unreadable || len(dl.Job) == 0:
		return "its dead letter holds no readable job"
	case dl.JobTruncated:
		return "its dead letter holds only the start of the job (it did not fit)"
	case dl.JobID == "":
		return "the job has no id"
	}
	var doc map[string]json.RawMessage
	if json.Unmarshal(dl.Job, &doc) != nil {
		return "the job it holds is not a JSON object"
	}
	if _, signed := doc["signature"]; signed {
		return "it is signed by its requester, and a new id breaks the signature: the producer submits it again, signed"
	}
	return ""
}

// RequeueJob is the dead letter's job as it was received, but for its id,
// newID, validated as a job: what `jetpilot requeue` and the console
// submit. ErrNotRequeueable (wrapped, with the reason) for a job that
// cannot be.
func RequeueJob(dl schemas.DeadLetter, newID string) (schemas.Job, []byte, error) {
	if why := Requeueable(dl); why != "" {
		return schemas.Job{}, nil, fmt.Errorf("%w job %s: %s", ErrNotRequeueable, dl.JobID, why)
	}
	var doc map[string]json.RawMessage
	_ = json.Unmarshal(dl.Job, &doc) // Requeueable decoded it
	doc["id"], _ = json.Marshal(newID)
	data, err := json.Marshal(doc)
	if err != nil {
		return schemas.Job{}, nil, fmt.Errorf("requeue job %s: encode: %w", dl.JobID, err)
	}
	job, err := schemas.DecodeJob(data)
	if err != nil {
		return schemas.Job{}, nil, fmt.Errorf("%w job %s (dead: %s): the job is invalid: %w", ErrNotRequeueable, dl.JobID, dl.Reason, err)
	}
	return job, data, nil
}
