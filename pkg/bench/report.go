package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// WriteJSON writes one JSON line per scenario and metric (scenario, metric, unit, median, min, max), then one per
// ratio and metric (ratio, metric, median, min, max).
func WriteJSON(w io.Writer, res *Results, pairs []Pair) error {
	enc := json.NewEncoder(w)
	for _, l := range res.ScenarioLines() {
		if err := enc.Encode(l); err != nil {
			return err
		}
	}
	for _, l := range res.RatioLines(pairs) {
		if err := enc.Encode(l); err != nil {
			return err
		}
	}
	return nil
}

// Target is one of the goals for eBPF mode against iptables mode.
type Target struct {
	Text   string
	Pass   bool
	Detail string
}

// Targets evaluates the goals on a pair (e.g. ebpf/iptables): >= 1.3x new connections per second, >= 1.1x
// request/response rate, lower p99 latency, zero conntrack entries. Only metrics present are checked.
func Targets(res *Results, p Pair) []Target {
	var out []Target
	has := func(s string) bool {
		for _, x := range res.Scenarios() {
			if x == s {
				return true
			}
		}
		return false
	}
	if !has(p.Num) || !has(p.Den) {
		return nil
	}
	for _, m := range res.Metrics() {
		r := res.PairedRatio(p.Num, p.Den, m.Name)
		if r.N == 0 {
			continue
		}
		switch {
		case strings.HasPrefix(m.Name, "connect_"):
			out = append(out, Target{fmt.Sprintf("%s %s >= 1.3x", p, m.Name), r.Median >= 1.3, fmtRatio(r)})
		case strings.HasPrefix(m.Name, "rr_"):
			out = append(out, Target{fmt.Sprintf("%s %s >= 1.1x", p, m.Name), r.Median >= 1.1, fmtRatio(r)})
		case strings.HasPrefix(m.Name, "p99_"):
			out = append(out, Target{fmt.Sprintf("%s %s < 1x (lower p99)", p, m.Name), r.Median < 1, fmtRatio(r)})
		}
	}
	if s := res.Summary(p.Num, metricConntrack.Name); s.N > 0 {
		out = append(out, Target{fmt.Sprintf("%s conntrack_peak == 0", p.Num), s.Max == 0,
			fmt.Sprintf("max %s over rounds", fmtNum(s.Max))})
	}
	return out
}

// MarkdownOptions adds context to the report.
type MarkdownOptions struct {
	Title   string
	Command string // the command line that produced the report
	SVG     string // path of the plot, linked when set
}

// WriteMarkdown writes the report: machine, settings, one table of medians [min-max] per scenario, one table of
// paired ratios, and the targets.
func WriteMarkdown(w io.Writer, rep *Report, mo MarkdownOptions) error {
	var b strings.Builder
	title := mo.Title
	if title == "" {
		title = "meshcap bench"
	}
	fmt.Fprintf(&b, "# %s\n\n", title)
	fmt.Fprintf(&b, "- Machine: %s, %d CPUs (%s)\n", orDash(rep.Info.CPU), rep.Info.CPUs, orDash(rep.Info.Host))
	fmt.Fprintf(&b, "- Kernel: %s\n", orDash(rep.Info.Kernel))
	fmt.Fprintf(&b, "- Go: %s\n", orDash(rep.Info.Go))
	if !rep.Started.IsZero() {
		fmt.Fprintf(&b, "- Date: %s (took %s)\n", rep.Started.UTC().Format("2006-01-02 15:04 MST"), rep.Elapsed.Round(time.Second))
	}
	if mo.Command != "" {
		fmt.Fprintf(&b, "- Command: `%s`\n", mo.Command)
	}
	fmt.Fprintf(&b, "- Rounds: %d; every round runs every scenario on fresh pods, order rotated; each test %s measured after %s warm-up\n",
		rep.Rounds, rep.Duration, rep.Warmup)
	if rep.CPUs != "" {
		fmt.Fprintf(&b, "- Server, client and proxies pinned to CPUs %s (taskset)\n", rep.CPUs)
	}
	if len(rep.ProxyArgs) > 0 {
		fmt.Fprintf(&b, "- Sidecar: `meshcap %s`\n", strings.Join(rep.ProxyArgs, " "))
	}
	for _, sc := range rep.Results.Scenarios() {
		if sc == "ebpf-fastpath" {
			b.WriteString("- `ebpf-fastpath` is `ebpf` plus `--fast-path`: an sk_msg program moves data between the app and its sidecar " +
				"directly into the peer socket (no loopback TCP on that hop). Opt-in and without backpressure, so never the headline\n")
			break
		}
	}
	fmt.Fprintf(&b, "- Cells: median [min - max] over rounds. Ratios are paired within a round, then summarized.\n")
	fmt.Fprintf(&b, "- cpu_*: CPU time of everything in both pods (client, server, sidecar proxies; cgroup cpu.stat) per request, connection or MiB.\n")
	fmt.Fprintf(&b, "- conntrack_peak: highest sum of both pods' nf_conntrack_count during the scenario.\n\n")

	res := rep.Results
	scen := res.Scenarios()
	b.WriteString("## Results\n\n| metric | unit |")
	for _, s := range scen {
		fmt.Fprintf(&b, " %s |", s)
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---:|", len(scen)) + "\n")
	for _, m := range res.Metrics() {
		fmt.Fprintf(&b, "| %s | %s |", m.Name, m.Unit)
		for _, s := range scen {
			sum := res.Summary(s, m.Name)
			if sum.N == 0 {
				b.WriteString(" - |")
				continue
			}
			fmt.Fprintf(&b, " %s [%s - %s] |", fmtNum(sum.Median), fmtNum(sum.Min), fmtNum(sum.Max))
		}
		b.WriteString("\n")
	}
	if len(rep.Pairs) > 0 {
		b.WriteString("\n## Ratios (paired per round)\n\n| metric |")
		for _, p := range rep.Pairs {
			fmt.Fprintf(&b, " %s |", p)
		}
		b.WriteString("\n|---|" + strings.Repeat("---:|", len(rep.Pairs)) + "\n")
		for _, m := range res.Metrics() {
			fmt.Fprintf(&b, "| %s |", m.Name)
			for _, p := range rep.Pairs {
				r := res.PairedRatio(p.Num, p.Den, m.Name)
				if r.N == 0 {
					b.WriteString(" - |")
					continue
				}
				fmt.Fprintf(&b, " %s |", fmtRatio(r))
			}
			b.WriteString("\n")
		}
	}
	for _, p := range []Pair{{"ebpf", "iptables"}, {"ebpf-full", "iptables-full"}} {
		ts := Targets(res, p)
		if len(ts) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n## Targets: %s\n\n", p)
		for _, t := range ts {
			mark := "PASS"
			if !t.Pass {
				mark = "FAIL"
			}
			fmt.Fprintf(&b, "- %s %s (%s)\n", mark, t.Text, t.Detail)
		}
	}
	if mo.SVG != "" {
		fmt.Fprintf(&b, "\n![rates and latency percentiles per scenario](%s)\n", mo.SVG)
	}
	if len(rep.Warnings) > 0 {
		b.WriteString("\n## Warnings\n\n")
		for _, wmsg := range rep.Warnings {
			fmt.Fprintf(&b, "- %s\n", wmsg)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func fmtRatio(s Summary) string {
	return fmt.Sprintf("%.2fx [%.2f - %.2f]", s.Median, s.Min, s.Max)
}

// fmtNum prints with 3 significant digits at least, thousands grouped for big values.
func fmtNum(v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case v == 0:
		return "0"
	case math.Abs(v) >= 1000:
		return groupThousands(fmt.Sprintf("%.0f", v))
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	case math.Abs(v) >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

func groupThousands(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}
