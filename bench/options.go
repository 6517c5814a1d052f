package bench

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Scenario names one measurement.
type Scenario string

// The scenarios, in the order Run executes them within a run.
const (
	ScenarioBaseline    Scenario = "baseline"
	ScenarioQueue       Scenario = "queue"
	ScenarioFull        Scenario = "full"
	ScenarioScaleOut    Scenario = "scaleout"
	ScenarioLatency     Scenario = "latency"
	ScenarioConcurrency Scenario = "concurrency"
	ScenarioPolicy      Scenario = "policy"
)

// AllScenarios lists every scenario in execution order.
var AllScenarios = []Scenario{ScenarioBaseline, ScenarioQueue, ScenarioFull, ScenarioScaleOut, ScenarioLatency, ScenarioConcurrency, ScenarioPolicy}

// ParseScenarios turns "queue,full" (or a list of names) into scenarios,
// in execution order. Empty input means every scenario.
func ParseScenarios(names []string) ([]Scenario, error) {
	var out []Scenario
	for _, n := range names {
		for _, part := range strings.Split(n, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			s := Scenario(part)
			if !slices.Contains(AllScenarios, s) {
				return nil, fmt.Errorf("unknown scenario %q; known: %s", part, joinScenarios(AllScenarios))
			}
			if !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
	}
	if len(out) == 0 {
		return slices.Clone(AllScenarios), nil
	}
	slices.SortFunc(out, func(a, b Scenario) int {
		return slices.Index(AllScenarios, a) - slices.Index(AllScenarios, b)
	})
	return out, nil
}

func joinScenarios(ss []Scenario) string {
	parts := make([]string, len(ss))
	for i, s := range ss {
		parts[i] = string(s)
	}
	return strings.Join(parts, ", ")
}

// Options configure Run. The zero value of every field takes the default
// documented on it; QuickOptions is a much smaller load for a smoke run.
type Options struct {
	// Runs is how many times every scenario runs; the report shows the
	// median. Default 3.
	Runs int
	// Scenarios to run. Default: all. Ratios need the baseline, so it runs
	// whenever queue, full or scaleout does.
	Scenarios []Scenario

	// Jobs is the number of jobs per run of baseline, queue and scaleout.
	// Default 20000.
	Jobs int
	// FullJobs is the number of jobs per run of the full path (each is a
	// session, an event stream and a message on the simulator). Default 5000.
	FullJobs int
	// Concurrency is the job slots of every worker (and of the baseline
	// loop, so both hold as many jobs at once) in the throughput and
	// latency scenarios. Default 64.
	Concurrency int
	// ScaleOut is the worker counts of the scaleout scenario. Default 1, 2, 4.
	ScaleOut []int

	// InFlight is the number of runs the concurrency scenario holds open on
	// one worker. Default 10000.
	InFlight int
	// IdleWindow is how long the concurrency scenario measures CPU while
	// the runs idle. It should span the worker's heartbeat period (AckWait/3,
	// 10s) so heartbeats are counted. Default 10s.
	IdleWindow time.Duration
	// ChildCommand starts the worker of the concurrency scenario in a child
	// process (argv; the configuration is passed in the environment, see
	// ChildMain), so its RSS, goroutines and CPU are the worker's alone. Nil
	// runs the worker in this process, where the figures also include the
	// simulator and the NATS server (the report says so).
	ChildCommand []string

	// Rate is the steady publish rate of the latency scenario, jobs/s.
	// Default 500.
	Rate int
	// LatencyDuration is how long the latency scenario publishes. Default 10s.
	LatencyDuration time.Duration

	// PolicyWorkers is the number of workers the policy scenario starts,
	// each watching the policy bucket on its own connection (and the number
	// of raw KV watchers of its baseline). Default 8.
	PolicyWorkers int
	// PolicyUpdates is how many policy versions the policy scenario stores
	// per run, one at a time, alternating an incident freeze and the normal
	// policy (and how many puts its raw-watch baseline makes). Default 100,
	// so that p99 (nearest rank) is not simply the maximum.
	PolicyUpdates int

	// Durable runs the embedded server with sync_interval: always (every
	// JetStream write fsynced before it is acknowledged), as `jetpilot dev`
	// does, instead of nats-server's lazy default: the throughput figures
	// then show what every write per job costs. Default false, so figures
	// stay comparable run to run.
	Durable bool

	// ScenarioTimeout bounds one run of one scenario. Default 3m.
	ScenarioTimeout time.Duration
	// Dir is where the NATS store lives. Default: a new temporary
	// directory, removed at the end.
	Dir string
	// ProfileDir, when set, makes the first run write CPU and allocation
	// profiles of the queue and full paths there (cpu-<scenario>.pprof,
	// allocs-<scenario>-before.pprof, allocs-<scenario>-after.pprof; compare
	// the allocs pair with `go tool pprof -base`).
	ProfileDir string
	// Progress receives one line per finished scenario run. Default: none.
	Progress io.Writer
}

// QuickOptions is a small load that still exercises every scenario, for a
// fast look (`jetpilot-bench --quick`); the figures are noisy.
func QuickOptions() Options {
	return Options{
		Runs:            3,
		Jobs:            1000,
		FullJobs:        300,
		InFlight:        1000,
		IdleWindow:      2 * time.Second,
		LatencyDuration: 2 * time.Second,
	}
}

// Defaults of Options.
const (
	DefaultRuns            = 3
	DefaultJobs            = 20000
	DefaultFullJobs        = 5000
	DefaultConcurrency     = 64
	DefaultInFlight        = 10000
	DefaultIdleWindow      = 10 * time.Second
	DefaultRate            = 500
	DefaultLatencyDuration = 10 * time.Second
	DefaultPolicyWorkers   = 8
	DefaultPolicyUpdates   = 100
	DefaultScenarioTimeout = 3 * time.Minute
)

// Upper bounds that keep a run bounded whatever the flags say.
const (
	maxJobs     = 1_000_000
	maxInFlight = 50_000
	maxRuns     = 50
	// maxPolicyUpdates keeps the policy scenario's loop bounded.
	maxPolicyUpdates = 1000
)

func (o Options) withDefaults() (Options, error) {
	if o.Runs == 0 {
		o.Runs = DefaultRuns
	}
	if o.Jobs == 0 {
		o.Jobs = DefaultJobs
	}
	if o.FullJobs == 0 {
		o.FullJobs = DefaultFullJobs
	}
	if o.Concurrency == 0 {
		o.Concurrency = DefaultConcurrency
	}
	if len(o.ScaleOut) == 0 {
		o.ScaleOut = []int{1, 2, 4}
	}
	if o.InFlight == 0 {
		o.InFlight = DefaultInFlight
	}
	if o.IdleWindow == 0 {
		o.IdleWindow = DefaultIdleWindow
	}
	if o.Rate == 0 {
		o.Rate = DefaultRate
	}
	if o.LatencyDuration == 0 {
		o.LatencyDuration = DefaultLatencyDuration
	}
	if o.PolicyWorkers == 0 {
		o.PolicyWorkers = DefaultPolicyWorkers
	}
	if o.PolicyUpdates == 0 {
		o.PolicyUpdates = DefaultPolicyUpdates
	}
	if o.ScenarioTimeout == 0 {
		o.ScenarioTimeout = DefaultScenarioTimeout
	}
	scen, err := ParseScenarios(func() []string {
		s := make([]string, len(o.Scenarios))
		for i, x := range o.Scenarios {
			s[i] = string(x)
		}
		return s
	}())
	if err != nil {
		return o, err
	}
	needsBaseline := slices.ContainsFunc(scen, func(s Scenario) bool {
		return s == ScenarioQueue || s == ScenarioFull || s == ScenarioScaleOut
	})
	if needsBaseline && !slices.Contains(scen, ScenarioBaseline) {
		scen = append([]Scenario{ScenarioBaseline}, scen...)
	}
	o.Scenarios = scen

	switch {
	case o.Runs < 1 || o.Runs > maxRuns:
		return o, fmt.Errorf("runs must be 1-%d, got %d", maxRuns, o.Runs)
	case o.Jobs < 1 || o.Jobs > maxJobs:
		return o, fmt.Errorf("jobs must be 1-%d, got %d", maxJobs, o.Jobs)
	case o.FullJobs < 1 || o.FullJobs > maxJobs:
		return o, fmt.Errorf("full-path jobs must be 1-%d, got %d", maxJobs, o.FullJobs)
	case o.Concurrency < 1 || o.Concurrency > 10_000:
		return o, fmt.Errorf("concurrency must be 1-10000, got %d", o.Concurrency)
	case o.InFlight < 1 || o.InFlight > maxInFlight:
		return o, fmt.Errorf("in-flight runs must be 1-%d, got %d", maxInFlight, o.InFlight)
	case o.IdleWindow < 0 || o.IdleWindow > 10*time.Minute:
		return o, fmt.Errorf("idle window must be 0-10m, got %s", o.IdleWindow)
	case o.Rate < 1 || o.Rate > 100_000:
		return o, fmt.Errorf("rate must be 1-100000 jobs/s, got %d", o.Rate)
	case o.LatencyDuration <= 0 || o.LatencyDuration > 10*time.Minute:
		return o, fmt.Errorf("latency duration must be positive and at most 10m, got %s", o.LatencyDuration)
	case o.PolicyWorkers < 1 || o.PolicyWorkers > 64:
		return o, fmt.Errorf("policy workers must be 1-64, got %d", o.PolicyWorkers)
	case o.PolicyUpdates < 1 || o.PolicyUpdates > maxPolicyUpdates:
		return o, fmt.Errorf("policy updates must be 1-%d, got %d", maxPolicyUpdates, o.PolicyUpdates)
	case o.ScenarioTimeout <= 0:
		return o, fmt.Errorf("scenario timeout must be positive, got %s", o.ScenarioTimeout)
	}
	for _, n := range o.ScaleOut {
		if n < 1 || n > 64 {
			return o, fmt.Errorf("scale-out worker counts must be 1-64, got %d", n)
		}
	}
	if o.Rate*int(o.LatencyDuration/time.Second+1) > maxJobs {
		return o, fmt.Errorf("latency scenario would publish more than %d jobs", maxJobs)
	}
	return o, nil
}

func (o Options) has(s Scenario) bool { return slices.Contains(o.Scenarios, s) }
