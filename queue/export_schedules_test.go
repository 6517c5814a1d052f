package queue

import "context"

// PublishUnchecked stores a schedule skipping the local checks, so a test
// can see what the server says about a pattern.
func (s *Schedules) PublishUnchecked(ctx context.Context, sch Schedule, tmpl []byte) error {
	return s.publish(ctx, s.cfg.SchedulesStream(), sch, tmpl)
}

// VersionBefore exposes versionBefore.
func VersionBefore(v, min string) bool { return versionBefore(v, min) }
