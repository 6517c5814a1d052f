package queue

import "strings"

// JobIDOfSubject reads the job id back from a per-job subject of kind
// ("decisions" for "<prefix>.decisions.<job_id>"), undoing the encoding of
// empty id parts. ok is false when subject is not one of kind's. A message
// is about the job its subject names, whatever its body says: subject
// permissions must mean what they say.
func (cfg Config) JobIDOfSubject(kind, subject string) (jobID string, ok bool) {
	rest, ok := strings.CutPrefix(subject, cfg.subject(kind, ""))
	if !ok || rest == "" {
		return "", false
	}
	parts := strings.Split(rest, ".")
	for i, p := range parts {
		if p == "~" {
			parts[i] = ""
		}
	}
	return strings.Join(parts, "."), true
}
