package worker

import (
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// decodeJob decodes a job message. A job that a schedule fired
// (queue.Config.FiringOf: it came through JOBS's source of SCHEDULES) has
// no id of its own: it gets "<schedule>:<RFC 3339 second JOBS stored it>",
// the same on every delivery, so a firing runs once, and its metadata gets
// the schedule's name under queue.ScheduleMetadataKey. body is what was
// decoded: the message as received, with a firing's id added.
func (w *Worker) decodeJob(msg jetstream.Msg, meta *jetstream.MsgMetadata) (body []byte, job schemas.Job, err error) {
	body = msg.Data()
	if meta == nil {
		meta = &jetstream.MsgMetadata{}
	}
	f, fired, err := w.qcfg.FiringOf(msg.Headers(), meta.Timestamp)
	if err != nil {
		return body, schemas.Job{}, &schemas.ValidationError{Problems: []schemas.FieldError{{Reason: err.Error()}}}
	}
	if !fired {
		job, err = schemas.DecodeJob(body)
		return body, job, err
	}
	body = f.Job(body)
	job, err = schemas.DecodeJob(body)
	if md, serr := f.Stamp(job.Metadata); err == nil {
		job.Metadata, err = md, serr
	} else if serr == nil {
		job.Metadata = md // a rejection names the schedule too
	}
	return body, job, err
}
