package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// Env is what a scenario's set-up may use.
type Env struct {
	Meshcap   string   // the meshcap binary every step runs (exactly what users run)
	ProxyArgs []string // argv after the binary for a sidecar proxy, e.g. ["proxy"]
	AdminAddr string   // when set, proxies also get --admin-addr (pprof), e.g. 127.0.0.1:15000
	CPUs      string   // when set, long-running pod processes run under `taskset -c CPUs`
	Log       *zap.Logger
}

// Start starts a long-running meshcap process (server, client, proxy) in pod, pinned to env.CPUs when set.
func (env *Env) start(pod *podnet.Pod, args ...string) (*process, error) {
	if env.CPUs == "" {
		return startProcess(pod, nil, env.Meshcap, args...)
	}
	return startProcess(pod, nil, "taskset", append([]string{"-c", env.CPUs, env.Meshcap}, args...)...)
}

// Teardown undoes a Setup. Pods themselves (netns, cgroup, processes left in the cgroup) are removed by the runner
// after the teardown, so a teardown only needs to undo what lives outside the pods (pinned BPF objects, for example).
type Teardown func() error

// Scenario prepares one capture mode on a fresh client/server pod pair. The pair is linked, the bench server
// listens in the server pod, and nothing else is set up. Setup must leave nothing behind when it fails.
type Scenario interface {
	Name() string
	Setup(ctx context.Context, env *Env, client, server *podnet.Pod) (Teardown, error)
}

// Direct is the baseline: no capture, no proxy, and no nat table in either netns.
type Direct struct{}

func (Direct) Name() string { return "direct" }

func (Direct) Setup(context.Context, *Env, *podnet.Pod, *podnet.Pod) (Teardown, error) {
	return func() error { return nil }, nil
}

// Step is one meshcap invocation. Args are the argv after the binary; the placeholders {cgroup}, {netns}, {pod} and
// {ip} are replaced by the pod's values. InPod runs the step inside the pod (netns and cgroup), else on the host.
type Step struct {
	Args  []string
	InPod bool
}

// Sidecar is what one pod gets: a sidecar proxy (started in the pod as root; it drops to uid 1337 itself), capture
// steps run after the proxy listens, and undo steps run at teardown (errors logged, not fatal).
type Sidecar struct {
	Proxy   bool
	Capture []Step
	Undo    []Step
}

// CLI is a scenario made only of meshcap command lines, so it exercises exactly what users run.
type CLI struct {
	ScenarioName   string
	Client, Server *Sidecar // nil: nothing in that pod
}

func (s *CLI) Name() string { return s.ScenarioName }

// Outbound capture flags shared by both modes (istio's defaults for a sidecar: proxy uid 1337, -i '*').
var (
	iptablesOut  = []string{"iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", ""}
	iptablesFull = []string{"iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", "*"}
	// eBPF mode as deployed: capture alone. "ebpf-fastpath" adds the opt-in sk_msg fast path of the app<->proxy
	// hop, for comparison only: it has no backpressure (a non-reading peer lets an app push without bound,
	// docs/dev/perf-notes.md), so it is off in every default and never the headline.
	ebpfOut    = []string{"ebpf", "attach", "--cgroup", "{cgroup}", "-i", "*"}
	ebpfOutFP  = []string{"ebpf", "attach", "--cgroup", "{cgroup}", "-i", "*", "--fast-path"}
	ebpfDetach = []string{"ebpf", "detach", "--cgroup", "{cgroup}"}
	// The -full variant adds inbound capture of the pod's netns (sk_lookup steering its ports to 15006) in the same
	// command; the sidecar, already running, is found and registered by the attach. Detach removes both.
	ebpfFull       = []string{"ebpf", "attach", "--cgroup", "{cgroup}", "--netns", "{netns}", "-i", "*", "-b", "*"}
	ebpfFullDetach = []string{"ebpf", "detach", "--cgroup", "{cgroup}", "--netns", "{netns}"}
)

// Builtin returns the known scenarios by name. "iptables" and "ebpf" capture the client's outbound connections into
// its sidecar (15001); the "-full" variants also capture inbound in the server pod (15006), the two-sidecar path.
// The eBPF scenarios attach as `meshcap ebpf attach` does by default; "ebpf-fastpath" adds --fast-path.
func Builtin() map[string]Scenario {
	ipt := func(args []string) *Sidecar { return &Sidecar{Proxy: true, Capture: []Step{{Args: args, InPod: true}}} }
	bpf := func(inbound bool) *Sidecar {
		if inbound {
			return &Sidecar{Proxy: true, Capture: []Step{{Args: ebpfFull}}, Undo: []Step{{Args: ebpfFullDetach}}}
		}
		return &Sidecar{Proxy: true, Capture: []Step{{Args: ebpfOut}}, Undo: []Step{{Args: ebpfDetach}}}
	}
	return map[string]Scenario{
		"direct":        Direct{},
		"iptables":      &CLI{ScenarioName: "iptables", Client: ipt(iptablesOut)},
		"iptables-full": &CLI{ScenarioName: "iptables-full", Client: ipt(iptablesFull), Server: ipt(iptablesFull)},
		"ebpf":          &CLI{ScenarioName: "ebpf", Client: bpf(false)},
		"ebpf-full":     &CLI{ScenarioName: "ebpf-full", Client: bpf(true), Server: bpf(true)},
		"ebpf-fastpath": &CLI{ScenarioName: "ebpf-fastpath",
			Client: &Sidecar{Proxy: true, Capture: []Step{{Args: ebpfOutFP}}, Undo: []Step{{Args: ebpfDetach}}}},
	}
}

// DefaultScenarios is the report's scenario order.
var DefaultScenarios = []string{"direct", "iptables", "ebpf", "ebpf-fastpath", "iptables-full", "ebpf-full"}

// ParseScenarios resolves a comma list against Builtin (order kept, duplicates dropped).
func ParseScenarios(list string) ([]Scenario, error) {
	b := Builtin()
	var out []Scenario
	seen := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		if n == "" || seen[n] {
			continue
		}
		s, ok := b[n]
		if !ok {
			var names []string
			for k := range b {
				names = append(names, k)
			}
			sort.Strings(names)
			return nil, fmt.Errorf("unknown scenario %q: want one of %s", n, strings.Join(names, ", "))
		}
		seen[n] = true
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no scenario in %q", list)
	}
	return out, nil
}

func expand(args []string, p *podnet.Pod) []string {
	r := strings.NewReplacer("{cgroup}", p.CgroupDir, "{netns}", p.NetnsPath, "{pod}", p.Name, "{ip}", p.IP.String())
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = r.Replace(a)
	}
	return out
}

// runStep runs one meshcap command to completion (30 s at most).
func runStep(ctx context.Context, env *Env, p *podnet.Pod, st Step) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	args := expand(st.Args, p)
	cmd := exec.CommandContext(ctx, env.Meshcap, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	var err error
	if st.InPod {
		if err = p.Start(cmd, nil); err == nil {
			err = cmd.Wait()
		}
	} else {
		err = cmd.Run()
	}
	if err != nil {
		return fmt.Errorf("meshcap %s (pod %s): %w: %s", strings.Join(quoteArgs(args), " "), p.Name, err, strings.TrimSpace(out.String()))
	}
	env.Log.Debug("ran", zap.String("pod", p.Name), zap.Strings("args", args))
	return nil
}

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " *") {
			a = "'" + a + "'"
		}
		out[i] = a
	}
	return out
}

// ProxyPods returns the pods that run a sidecar proxy (for profiling through --admin-addr).
func (s *CLI) ProxyPods(client, server *podnet.Pod) []*podnet.Pod {
	var out []*podnet.Pod
	if s.Client != nil && s.Client.Proxy {
		out = append(out, client)
	}
	if s.Server != nil && s.Server.Proxy {
		out = append(out, server)
	}
	return out
}

// Setup starts the proxies (each with a --stats-file), then runs the capture steps, client pod first. On error
// everything done is undone. The teardown stops the proxies, undoes the capture, and then checks that the traffic
// really went through the sidecars (the client's proxy accepted outbound connections, the server's inbound ones):
// a scenario whose capture silently does nothing fails instead of being reported as fast.
func (s *CLI) Setup(ctx context.Context, env *Env, client, server *podnet.Pod) (Teardown, error) {
	dir, err := os.MkdirTemp("", "meshcap-bench-")
	if err != nil {
		return nil, fmt.Errorf("scenario %s: %w", s.ScenarioName, err)
	}
	// The proxy writes its stats file after dropping to uid 1337.
	if err := os.Chmod(dir, 0o777); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("scenario %s: %w", s.ScenarioName, err)
	}
	var undo, checks []func() error
	teardown := func() error {
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			if err := undo[i](); err != nil {
				errs = append(errs, err)
			}
		}
		undo = nil
		if len(errs) == 0 {
			for _, c := range checks {
				if err := c(); err != nil {
					errs = append(errs, fmt.Errorf("scenario %s: capture check: %w", s.ScenarioName, err))
				}
			}
		}
		checks = nil
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
	for _, side := range []struct {
		pod      *podnet.Pod
		sc       *Sidecar
		role     string
		listener string
	}{{client, s.Client, "client", "outbound"}, {server, s.Server, "server", "inbound"}} {
		if side.sc == nil {
			continue
		}
		if side.sc.Proxy {
			stats := filepath.Join(dir, side.role+".json")
			args := append(append([]string(nil), env.ProxyArgs...), "--stats-file", stats)
			if env.AdminAddr != "" {
				args = append(args, "--admin-addr", env.AdminAddr)
			}
			proc, err := startProxy(ctx, env, side.pod, args)
			if err != nil {
				_ = teardown()
				return nil, fmt.Errorf("scenario %s: %w", s.ScenarioName, err)
			}
			undo = append(undo, proc.stop)
			if len(side.sc.Capture) > 0 {
				role, listener := side.role, side.listener
				checks = append(checks, func() error { return checkRelayed(stats, role, listener) })
			}
		}
		for _, st := range side.sc.Undo {
			pod, st := side.pod, st
			undo = append(undo, func() error { return runStep(context.Background(), env, pod, st) })
		}
		for _, st := range side.sc.Capture {
			if err := runStep(ctx, env, side.pod, st); err != nil {
				_ = teardown()
				return nil, fmt.Errorf("scenario %s: %w", s.ScenarioName, err)
			}
		}
	}
	return teardown, nil
}

// checkRelayed reads a proxy's --stats-file and requires accepted connections on listener (outbound or inbound).
func checkRelayed(path, role, listener string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%s sidecar stats: %w", role, err)
	}
	var st map[string]json.RawMessage
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("%s sidecar stats %s: %w", role, path, err)
	}
	var l struct {
		Accepted uint64 `json:"accepted"`
	}
	if raw, ok := st[listener]; !ok || json.Unmarshal(raw, &l) != nil {
		return fmt.Errorf("%s sidecar stats %s: no %q listener counters: %s", role, path, listener, data)
	}
	if l.Accepted == 0 {
		return fmt.Errorf("the %s sidecar accepted no %s connection: traffic bypassed the proxy", role, listener)
	}
	return nil
}

// startProxy runs the sidecar proxy in pod (as root: it drops to uid 1337 itself) and waits until it listens on
// 15001.
func startProxy(ctx context.Context, env *Env, pod *podnet.Pod, args []string) (*process, error) {
	proc, err := env.start(pod, args...)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, err := listening(pod, 15001)
		if err != nil {
			_ = proc.stop()
			return nil, err
		}
		if ok {
			return proc, nil
		}
		if proc.exited() {
			_ = proc.stop()
			return nil, fmt.Errorf("meshcap %s exited in pod %s: %s", strings.Join(args, " "), pod.Name, proc.stderrTail())
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			_ = proc.stop()
			return nil, fmt.Errorf("meshcap %s in pod %s: not listening on 15001 after 10s: %s", strings.Join(args, " "), pod.Name, proc.stderrTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
