package bench

import (
	"math"
	"sort"
	"strconv"
)

// Rotation returns the order in which round r runs the scenarios: the list rotated left by r, so that over n rounds
// every scenario runs once in every position.
func Rotation(scenarios []string, r int) []string {
	n := len(scenarios)
	out := make([]string, n)
	if n == 0 {
		return out
	}
	r = ((r % n) + n) % n
	for i := range scenarios {
		out[i] = scenarios[(i+r)%n]
	}
	return out
}

// Summary is the median, minimum and maximum of a set of values (NaN values ignored). N is the number of values.
type Summary struct {
	Median, Min, Max float64
	N                int
}

// Summarize ignores NaN; the median of an even count is the mean of the two middle values. Empty gives N == 0
// and NaN fields.
func Summarize(vs []float64) Summary {
	var xs []float64
	for _, v := range vs {
		if !math.IsNaN(v) {
			xs = append(xs, v)
		}
	}
	if len(xs) == 0 {
		return Summary{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	sort.Float64s(xs)
	n := len(xs)
	med := xs[n/2]
	if n%2 == 0 {
		med = (xs[n/2-1] + xs[n/2]) / 2
	}
	return Summary{Median: med, Min: xs[0], Max: xs[n-1], N: n}
}

// Metric describes one measured quantity.
type Metric struct {
	Name        string
	Unit        string
	LowerBetter bool // latencies, CPU per request, conntrack entries
}

// Results collects one value per (round, scenario, metric).
type Results struct {
	Rounds    int
	scenarios []string
	metrics   []Metric
	metricIdx map[string]int
	vals      map[resKey][]float64
}

type resKey struct{ scenario, metric string }

// NewResults prepares storage for rounds rounds of the given scenarios (their order is the report's order).
func NewResults(rounds int, scenarios []string) *Results {
	return &Results{Rounds: rounds, scenarios: append([]string(nil), scenarios...), metricIdx: map[string]int{},
		vals: map[resKey][]float64{}}
}

// Scenarios in report order.
func (r *Results) Scenarios() []string { return r.scenarios }

// Metrics in the order they were first recorded.
func (r *Results) Metrics() []Metric { return r.metrics }

// Add records value v of metric m for scenario s in round (0-based). A later Add for the same cell replaces it.
func (r *Results) Add(round int, s string, m Metric, v float64) {
	if round < 0 || round >= r.Rounds {
		return
	}
	if _, ok := r.metricIdx[m.Name]; !ok {
		r.metricIdx[m.Name] = len(r.metrics)
		r.metrics = append(r.metrics, m)
	}
	k := resKey{s, m.Name}
	vs := r.vals[k]
	if vs == nil {
		vs = make([]float64, r.Rounds)
		for i := range vs {
			vs[i] = math.NaN()
		}
		r.vals[k] = vs
	}
	vs[round] = v
}

// Values returns the per-round values (NaN where missing), or nil.
func (r *Results) Values(s, metric string) []float64 { return r.vals[resKey{s, metric}] }

// Summary of one scenario's metric over rounds.
func (r *Results) Summary(s, metric string) Summary { return Summarize(r.vals[resKey{s, metric}]) }

// PairedRatio computes num/den within each round (skipping rounds where either is missing or den is 0) and
// summarizes those per-round ratios.
func (r *Results) PairedRatio(num, den, metric string) Summary {
	a, b := r.vals[resKey{num, metric}], r.vals[resKey{den, metric}]
	var rs []float64
	for i := 0; i < len(a) && i < len(b); i++ {
		if math.IsNaN(a[i]) || math.IsNaN(b[i]) || b[i] == 0 {
			continue
		}
		rs = append(rs, a[i]/b[i])
	}
	return Summarize(rs)
}

// ScenarioLine is one JSON line per scenario and metric.
type ScenarioLine struct {
	Scenario string  `json:"scenario"`
	Metric   string  `json:"metric"`
	Unit     string  `json:"unit"`
	Median   float64 `json:"median"`
	Min      float64 `json:"min"`
	Max      float64 `json:"max"`
}

// RatioLine is one JSON line per ratio and metric; Ratio is "num/den", e.g. "ebpf/iptables".
type RatioLine struct {
	Ratio  string  `json:"ratio"`
	Metric string  `json:"metric"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Pair names a ratio num/den.
type Pair struct{ Num, Den string }

func (p Pair) String() string { return p.Num + "/" + p.Den }

// DefaultPairs returns the ratios reported for a scenario set: each eBPF variant over its iptables twin, then every
// scenario over direct.
func DefaultPairs(scenarios []string) []Pair {
	has := map[string]bool{}
	for _, s := range scenarios {
		has[s] = true
	}
	var out []Pair
	for _, p := range []Pair{{"ebpf", "iptables"}, {"ebpf-full", "iptables-full"}, {"ebpf-fastpath", "iptables"}} {
		if has[p.Num] && has[p.Den] {
			out = append(out, p)
		}
	}
	if has["direct"] {
		for _, s := range scenarios {
			if s != "direct" {
				out = append(out, Pair{s, "direct"})
			}
		}
	}
	return out
}

// ScenarioLines returns one line per scenario and metric that has at least one value.
func (r *Results) ScenarioLines() []ScenarioLine {
	var out []ScenarioLine
	for _, s := range r.scenarios {
		for _, m := range r.metrics {
			sum := r.Summary(s, m.Name)
			if sum.N == 0 {
				continue
			}
			out = append(out, ScenarioLine{Scenario: s, Metric: m.Name, Unit: m.Unit,
				Median: round6(sum.Median), Min: round6(sum.Min), Max: round6(sum.Max)})
		}
	}
	return out
}

// RatioLines returns one line per pair and metric that has at least one paired round.
func (r *Results) RatioLines(pairs []Pair) []RatioLine {
	var out []RatioLine
	for _, p := range pairs {
		for _, m := range r.metrics {
			sum := r.PairedRatio(p.Num, p.Den, m.Name)
			if sum.N == 0 {
				continue
			}
			out = append(out, RatioLine{Ratio: p.String(), Metric: m.Name,
				Median: round6(sum.Median), Min: round6(sum.Min), Max: round6(sum.Max)})
		}
	}
	return out
}

// round6 keeps 6 significant digits (JSON readability; far below run-to-run noise).
func round6(v float64) float64 {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return v
	}
	f, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'g', 6, 64), 64)
	return f
}
