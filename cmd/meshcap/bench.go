package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/meshcap/meshcap/pkg/bench"
)

func init() {
	register(newBenchCmd)
	register(newBenchServerCmd)
	register(newBenchClientCmd)
}

// Quick and thorough defaults: --quick took 100 s on 2 cores with all six scenarios (2026-11-27).
const (
	quickRounds, quickDuration, quickWarmup          = 3, 600 * time.Millisecond, 150 * time.Millisecond
	thoroughRounds, thoroughDuration, thoroughWarmup = 5, 3 * time.Second, 500 * time.Millisecond
)

func newBenchCmd(log *zap.Logger) *cobra.Command {
	var (
		quick, jsonOut          bool
		rounds                  int
		duration, warmup        time.Duration
		scenarios, tests        string
		outSVG, outMD, proxyArg string
		binary                  string
		pprofDir, pprofTest     string
		cpus                    string
		podPrefix               string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Benchmark direct, iptables-mode and eBPF-mode capture with sidecar proxies on throwaway pods",
		Long: `bench builds a fresh client pod and server pod (network namespace + cgroup v2, veth) for every scenario of
every round, starts the bench server in the server pod, sets the scenario up with meshcap's own commands (proxy,
iptables, ebpf attach), runs meshcap's load generator inside the client pod, and removes everything afterwards.

Scenarios: direct (no capture, no nat table), iptables and ebpf (client outbound capture into its sidecar on 15001),
iptables-full and ebpf-full (also inbound capture into the server's sidecar on 15006). The eBPF scenarios attach
as 'meshcap ebpf attach' does by default; ebpf-fastpath adds --fast-path (sk_msg redirect on the app<->sidecar
hop; opt-in, no backpressure: see README), for comparison only.
Tests: rr_{1,1k}_c{1,16} (request/response on persistent connections), connect_c{1,16} (connect, one exchange,
close), stream_c1 (bulk one-way). Every round runs every scenario, order rotated; results are medians over rounds,
ratios are paired within a round. Output: a Markdown table, or JSON lines with --json. Needs root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return errors.New("bench needs root: it creates network namespaces and cgroups")
			}
			if err := throwawayBPFFS(log); err != nil {
				return err
			}
			if binary == "" {
				self, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find own binary: %w", err)
				}
				binary = self
			}
			r, d, w := thoroughRounds, thoroughDuration, thoroughWarmup
			if quick {
				r, d, w = quickRounds, quickDuration, quickWarmup
			}
			if cmd.Flags().Changed("rounds") {
				r = rounds
			}
			if cmd.Flags().Changed("duration") {
				d = duration
			}
			if cmd.Flags().Changed("warmup") {
				w = warmup
			}
			if r < 1 {
				return fmt.Errorf("invalid --rounds %d: want >= 1", r)
			}
			if d <= 0 {
				return fmt.Errorf("invalid --duration %s: want > 0", d)
			}
			if w < 0 {
				return fmt.Errorf("invalid --warmup %s: want >= 0", w)
			}
			scs, err := bench.ParseScenarios(scenarios)
			if err != nil {
				return fmt.Errorf("invalid --scenarios: %w", err)
			}
			ts, err := bench.SelectTests(tests)
			if err != nil {
				return fmt.Errorf("invalid --tests: %w", err)
			}
			if pprofDir != "" {
				found := false
				for _, t := range ts {
					found = found || t.Name == pprofTest
				}
				if !found {
					return fmt.Errorf("invalid --pprof-test %q: not among the tests run", pprofTest)
				}
			}
			proxyArgs := strings.Fields(proxyArg)
			if len(proxyArgs) == 0 {
				return fmt.Errorf("invalid --proxy-args %q: empty", proxyArg)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, err := bench.Run(ctx, bench.Options{Meshcap: binary, Scenarios: scs, Tests: ts, Rounds: r,
				Duration: d, Warmup: w, ProxyArgs: proxyArgs, Log: log, ProfileDir: pprofDir, ProfileTest: pprofTest, CPUs: cpus,
				PodPrefix: podPrefix})
			if err != nil {
				return fmt.Errorf("bench: %w", err)
			}
			svgRef := ""
			if outSVG != "" {
				var buf bytes.Buffer
				if err := bench.WriteSVG(&buf, rep.Results); err != nil {
					return fmt.Errorf("plot: %w", err)
				}
				if err := os.WriteFile(outSVG, buf.Bytes(), 0o644); err != nil {
					return fmt.Errorf("write --out-svg: %w", err)
				}
				svgRef = outSVG
				if outMD != "" {
					if rel, err := filepath.Rel(filepath.Dir(outMD), outSVG); err == nil {
						svgRef = rel
					}
				}
			}
			mo := bench.MarkdownOptions{Title: "meshcap benchmark", Command: "meshcap " + strings.Join(os.Args[1:], " "), SVG: svgRef}
			if outMD != "" {
				var buf bytes.Buffer
				if err := bench.WriteMarkdown(&buf, rep, mo); err != nil {
					return err
				}
				if err := os.WriteFile(outMD, spliceReport(outMD, buf.Bytes()), 0o644); err != nil {
					return fmt.Errorf("write --out-md: %w", err)
				}
			}
			if jsonOut {
				return bench.WriteJSON(cmd.OutOrStdout(), rep.Results, rep.Pairs)
			}
			return bench.WriteMarkdown(cmd.OutOrStdout(), rep, mo)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&quick, "quick", false, fmt.Sprintf("short run (%d rounds of %s per test, about 2 minutes on 2 cores)", quickRounds, quickDuration))
	f.BoolVar(&jsonOut, "json", false, "print JSON lines (one per scenario and metric, one per ratio and metric) instead of Markdown")
	f.IntVar(&rounds, "rounds", 0, fmt.Sprintf("rounds (default %d, %d with --quick)", thoroughRounds, quickRounds))
	f.DurationVar(&duration, "duration", 0, fmt.Sprintf("measured time per test (default %s, %s with --quick)", thoroughDuration, quickDuration))
	f.DurationVar(&warmup, "warmup", 0, fmt.Sprintf("unmeasured warm-up per test (default %s, %s with --quick)", thoroughWarmup, quickWarmup))
	f.StringVar(&scenarios, "scenarios", strings.Join(bench.DefaultScenarios, ","), "comma list of scenarios")
	f.StringVar(&tests, "tests", "", "comma list of tests (default all: rr_1_c1,rr_1_c16,rr_1k_c1,rr_1k_c16,connect_c1,connect_c16,stream_c1)")
	f.StringVar(&outSVG, "out-svg", "", "also write an SVG plot of rates and latency percentiles to this path")
	f.StringVar(&outMD, "out-md", "", "also write the Markdown report to this path")
	f.StringVar(&proxyArg, "proxy-args", "proxy", "sidecar proxy command line after the meshcap binary (space-separated)")
	f.StringVar(&pprofDir, "pprof-dir", "", "collect a CPU profile of every sidecar proxy (via --admin-addr) during --pprof-test into this directory")
	f.StringVar(&pprofTest, "pprof-test", "rr_1k_c16", "the test during which proxies are profiled")
	f.StringVar(&cpus, "cpus", "", `pin server, client and proxies to these CPUs (taskset list, e.g. "0"); default unpinned`)
	f.StringVar(&podPrefix, "pod-prefix", "mcb", "start of the names of the pods (netns + cgroup) the benchmark makes and removes")
	f.StringVar(&binary, "meshcap", "", "meshcap binary for the pods' processes (default: this binary)")
	return cmd
}

// newBenchServerCmd is the server app bench runs in the server pod.
func newBenchServerCmd(*zap.Logger) *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:    "bench-server",
		Short:  "bench's server app: answers N-byte requests with N bytes, discards streams",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			ln, err := bench.ListenTCP(ctx, listen)
			if err != nil {
				return err
			}
			line, _ := json.Marshal(map[string]string{"event": "ready", "addr": ln.Addr().String()})
			fmt.Fprintln(cmd.OutOrStdout(), string(line))
			return bench.Serve(ctx, ln)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "0.0.0.0:8080", "listen address")
	return cmd
}

// newBenchClientCmd is bench's load generator; it runs inside the client pod (its cgroup is where capture applies).
// It prints JSON lines: {"event":"start"} and {"event":"end"} around the measured window, then
// {"event":"result","result":{...}} (or {"event":"error","error":"..."}).
func newBenchClientCmd(*zap.Logger) *cobra.Command {
	var cfg bench.ClientConfig
	cmd := &cobra.Command{
		Use:    "bench-client",
		Short:  "bench's load generator: rr, connect or stream against a bench-server",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			emit := func(v any) {
				line, _ := json.Marshal(v)
				fmt.Fprintln(out, string(line))
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			res, err := bench.RunClient(ctx, cfg, func(ev string) { emit(map[string]string{"event": ev}) })
			if err != nil {
				emit(map[string]string{"event": "error", "error": err.Error()})
				return fmt.Errorf("bench-client: %w", err)
			}
			emit(struct {
				Event  string        `json:"event"`
				Result *bench.Result `json:"result"`
			}{"result", &res})
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Mode, "mode", bench.ModeRR, "rr, connect or stream")
	f.StringVar(&cfg.Addr, "addr", "", "server address host:port")
	f.IntVar(&cfg.Size, "size", 1, "request and response size in bytes (stream: write size, 0 = 64 KiB)")
	f.IntVar(&cfg.Conns, "conns", 1, "parallel connections")
	f.DurationVar(&cfg.Duration, "duration", 3*time.Second, "measured window")
	f.DurationVar(&cfg.Warmup, "warmup", 500*time.Millisecond, "unmeasured warm-up")
	return cmd
}

// reportMarker in an existing --out-md file keeps everything up to it (a hand-written method section, say) and
// replaces only what follows with the new report.
const reportMarker = "<!-- meshcap bench report: everything below is generated by meshcap bench --out-md -->"

func spliceReport(path string, report []byte) []byte {
	old, err := os.ReadFile(path)
	if err != nil {
		return report
	}
	i := bytes.Index(old, []byte(reportMarker))
	if i < 0 {
		return report
	}
	out := append([]byte(nil), old[:i+len(reportMarker)]...)
	out = append(out, "\n\n"...)
	return append(out, report...)
}
