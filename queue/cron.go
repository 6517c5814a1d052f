package queue

import (
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// cronParser reads what nats-server's scheduler reads (its cron.go is
// adapted from robfig/cron): six fields, seconds first, with names
// (JAN-DEC, SUN-SAT), ranges, lists, steps, '*' and '?'; the descriptors
// @yearly, @annually, @monthly, @weekly, @daily, @midnight and @hourly;
// and "@every <Go duration>". The server answers a bad pattern only with
// "pattern is invalid"; this says what is wrong.
var cronParser = cron.NewParser(cron.Second | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// CronSchedule is a validated schedule pattern.
type CronSchedule interface {
	// Next is the first firing after t.
	Next(t time.Time) time.Time
}

// ValidateCron checks a schedule pattern and time zone as the server will
// read them, and says what is wrong in words; tz "" is UTC. The server
// fires at most once a second: "@every" takes at least 1s, and, like
// "@at", no time zone. A one-shot "@at <time>" is not a schedule here
// (submit the job instead).
func ValidateCron(pattern, tz string) (CronSchedule, error) {
	bad := func(why string) (CronSchedule, error) {
		return nil, fmt.Errorf("cron %q: %s", pattern, why)
	}
	loc := time.UTC
	if tz != "" {
		l, err := time.LoadLocation(tz)
		if err != nil || tz == "Local" {
			return nil, fmt.Errorf("time zone %q: not an IANA time zone name such as Europe/Berlin or America/New_York", tz)
		}
		loc = l
	}
	p := strings.TrimSpace(pattern)
	switch {
	case p == "":
		return bad("empty; want 6 fields, seconds first, such as \"0 0 9 * * MON-FRI\" (09:00 on weekdays), or @daily, @hourly, @every 10m")
	case p != pattern || strings.ContainsAny(p, "\t\r\n") || strings.Contains(p, "  "):
		return bad("fields must be separated by single spaces, without leading or trailing space")
	case strings.HasPrefix(p, "TZ=") || strings.HasPrefix(p, "CRON_TZ="):
		return bad("give the time zone with --timezone, not in the pattern")
	case strings.HasPrefix(p, "@at"):
		return bad("@at fires once: submit the job instead (a schedule repeats)")
	case strings.HasPrefix(p, "@every"):
		d, err := time.ParseDuration(strings.TrimSpace(strings.TrimPrefix(p, "@every")))
		if err != nil || !strings.HasPrefix(p, "@every ") {
			return bad("want \"@every <duration>\", such as \"@every 90s\" or \"@every 1h30m\"")
		}
		if d < time.Second {
			return bad("the interval must be at least 1s")
		}
		if tz != "" {
			return bad("@every takes no time zone")
		}
		return cron.ConstantDelaySchedule{Delay: d}, nil
	case strings.HasPrefix(p, "@"):
		switch p {
		case "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly":
		default:
			return bad("unknown descriptor; use @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>")
		}
	default:
		if n := len(strings.Fields(p)); n != 6 {
			return bad(fmt.Sprintf("has %d fields, want 6: second minute hour day-of-month month day-of-week, such as \"0 0 9 * * MON-FRI\"", n))
		}
	}
	sched, err := cronParser.Parse(p)
	if err != nil {
		return bad(explainCron(p, err))
	}
	s, ok := sched.(*cron.SpecSchedule)
	if !ok {
		return nil, fmt.Errorf("cron %q: unexpected schedule type %T", pattern, sched)
	}
	s.Location = loc
	// The server looks five years ahead (robfig/cron as well): a pattern
	// that matches no date in that time, such as 30 February, never fires.
	if s.Next(time.Now()).IsZero() {
		return bad("matches no date (such as 30 February): it would never fire")
	}
	return s, nil
}

// cronFields names the six fields, in order.
var cronFields = []string{"second (0-59)", "minute (0-59)", "hour (0-23)", "day of month (1-31)", "month (1-12 or JAN-DEC)", "day of week (0-6 or SUN-SAT)"}

// explainCron names the first field of a six-field pattern that the parser
// refuses, and why.
func explainCron(p string, err error) string {
	fields := strings.Fields(p)
	if len(fields) == len(cronFields) {
		for i, f := range fields {
			probe := []string{"*", "*", "*", "*", "*", "*"}
			probe[i] = f
			if _, ferr := cronParser.Parse(strings.Join(probe, " ")); ferr != nil {
				return fmt.Sprintf("field %d, %s, %q: %v", i+1, cronFields[i], f, ferr)
			}
		}
	}
	return err.Error()
}
