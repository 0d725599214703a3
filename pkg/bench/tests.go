package bench

import (
	"fmt"
	"strings"
)

// Test is one load-generator configuration run in every scenario of every round.
type Test struct {
	Name  string // metric stem: rr_1k_c16, connect_c1, stream_c1
	Mode  string // rr, connect, stream
	Size  int
	Conns int
}

// DefaultTests is the matrix: request/response with 1 B and 1 KiB at 1 and 16 connections, new
// connections at 1 and 16 workers, one bulk stream.
func DefaultTests() []Test {
	return []Test{
		{"rr_1_c1", ModeRR, 1, 1},
		{"rr_1_c16", ModeRR, 1, 16},
		{"rr_1k_c1", ModeRR, 1024, 1},
		{"rr_1k_c16", ModeRR, 1024, 16},
		{"connect_c1", ModeConnect, 1, 1},
		{"connect_c16", ModeConnect, 1, 16},
		{"stream_c1", ModeStream, 0, 1},
	}
}

// SelectTests keeps the named tests (comma list, order of DefaultTests); empty keeps all. Unknown names are errors.
func SelectTests(list string) ([]Test, error) {
	all := DefaultTests()
	if strings.TrimSpace(list) == "" {
		return all, nil
	}
	want := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		found := false
		for _, t := range all {
			if t.Name == n {
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown test %q: want one of %s", n, strings.Join(testNames(all), ", "))
		}
		want[n] = true
	}
	var out []Test
	for _, t := range all {
		if want[t.Name] {
			out = append(out, t)
		}
	}
	return out, nil
}

func testNames(ts []Test) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Name)
	}
	return out
}

// Metric names and units derived from a test's result.
var (
	metricConntrack = Metric{Name: "conntrack_peak", Unit: "entries", LowerBetter: true}
)

// Observation is one named value derived from a run.
type Observation struct {
	Metric Metric
	Value  float64
}

// Observe turns one client result plus the CPU time consumed in both pods during its window into metrics:
// the rate (rr_*, connect_*: per second; stream_*: Gbit/s), latency percentiles in microseconds (p50_/p90_/p99_ +
// test name, not for stream), and CPU per request in microseconds (cpu_ + test name; per MiB for stream).
func Observe(t Test, r Result, cpuNs int64) []Observation {
	var out []Observation
	switch t.Mode {
	case ModeStream:
		out = append(out, Observation{Metric{Name: t.Name, Unit: "Gbit/s"}, r.Rate() / 1e9})
		if mib := float64(r.Bytes) / (1 << 20); mib > 0 && cpuNs > 0 {
			out = append(out, Observation{Metric{Name: "cpu_" + t.Name, Unit: "us/MiB", LowerBetter: true}, float64(cpuNs) / 1e3 / mib})
		}
		return out
	case ModeConnect:
		out = append(out, Observation{Metric{Name: t.Name, Unit: "conn/s"}, r.Rate()})
	default:
		out = append(out, Observation{Metric{Name: t.Name, Unit: "req/s"}, r.Rate()})
	}
	if r.Ops > 0 {
		for _, p := range []struct {
			name string
			ns   int64
		}{{"p50_", r.LatencyNs.P50}, {"p90_", r.LatencyNs.P90}, {"p99_", r.LatencyNs.P99}} {
			out = append(out, Observation{Metric{Name: p.name + t.Name, Unit: "us", LowerBetter: true}, float64(p.ns) / 1e3})
		}
		if cpuNs > 0 {
			unit := "us/req"
			if t.Mode == ModeConnect {
				unit = "us/conn"
			}
			out = append(out, Observation{Metric{Name: "cpu_" + t.Name, Unit: unit, LowerBetter: true}, float64(cpuNs) / 1e3 / float64(r.Ops)})
		}
	}
	return out
}
