package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// Options configure a benchmark run.
type Options struct {
	Meshcap    string // binary used for the server, client, proxies and capture set-up
	Scenarios  []Scenario
	Tests      []Test
	Rounds     int
	Duration   time.Duration // measured window of each test
	Warmup     time.Duration // unmeasured lead-in of each test
	ProxyArgs  []string      // argv of a sidecar proxy after the binary; default ["proxy"]
	ServerPort int           // default 8080
	Log        *zap.Logger

	// ProfileDir, when set, collects a CPU profile (pprof) of every sidecar proxy during the measured window of
	// ProfileTest (default rr_1k_c16) into ProfileDir/<scenario>-r<round>-<test>-<pod role>.pprof. The proxies then
	// run with --admin-addr 127.0.0.1:15000.
	ProfileDir  string
	ProfileTest string

	// CPUs, when set (taskset list such as "0" or "0-1"), pins the server, client and proxies to those CPUs.
	CPUs string

	// PodPrefix starts the name of every pod (netns and cgroup) the benchmark makes; default "mcb".
	PodPrefix string
}

// proxyPods is implemented by scenarios that run sidecar proxies (for profiling).
type proxyPods interface {
	ProxyPods(client, server *podnet.Pod) []*podnet.Pod
}

const profileAdminAddr = "127.0.0.1:15000"

// Topology addresses (each scenario gets its own pair of network namespaces, so they never collide).
var (
	ClientPrefix = netip.MustParsePrefix("198.18.0.1/24")
	ServerPrefix = netip.MustParsePrefix("198.18.0.2/24")
)

// Report is a finished run.
type Report struct {
	Results   *Results
	Pairs     []Pair
	Tests     []Test
	Info      SysInfo
	Rounds    int
	Duration  time.Duration
	Warmup    time.Duration
	Started   time.Time
	Elapsed   time.Duration
	Warnings  []string
	ProxyArgs []string
	CPUs      string // pinning of the pods' processes ("" = none)
}

// Run runs every scenario in every round (order rotated per round), each on a fresh pod pair that is removed
// afterwards, and collects the metrics.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if len(o.ProxyArgs) == 0 {
		o.ProxyArgs = []string{"proxy"}
	}
	if o.ServerPort == 0 {
		o.ServerPort = 8080
	}
	if o.Rounds < 1 {
		return nil, fmt.Errorf("invalid rounds %d: want >= 1", o.Rounds)
	}
	if len(o.Scenarios) == 0 || len(o.Tests) == 0 {
		return nil, errors.New("nothing to run: no scenario or no test")
	}
	if o.Duration <= 0 || o.Warmup < 0 {
		return nil, fmt.Errorf("invalid duration %s / warmup %s", o.Duration, o.Warmup)
	}
	if o.CPUs != "" && strings.Trim(o.CPUs, "0123456789,-") != "" {
		return nil, fmt.Errorf("invalid CPU list %q: want a taskset list such as 0 or 0-1", o.CPUs)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bench needs root: it creates network namespaces and cgroups")
	}
	byName := map[string]Scenario{}
	var names []string
	for _, s := range o.Scenarios {
		byName[s.Name()] = s
		names = append(names, s.Name())
	}
	rep := &Report{Results: NewResults(o.Rounds, names), Pairs: DefaultPairs(names), Tests: o.Tests, Info: CollectSysInfo(),
		Rounds: o.Rounds, Duration: o.Duration, Warmup: o.Warmup, Started: time.Now(), ProxyArgs: o.ProxyArgs, CPUs: o.CPUs}
	env := &Env{Meshcap: o.Meshcap, ProxyArgs: o.ProxyArgs, Log: o.Log, CPUs: o.CPUs}
	if o.ProfileDir != "" {
		if o.ProfileTest == "" {
			o.ProfileTest = "rr_1k_c16"
		}
		if err := os.MkdirAll(o.ProfileDir, 0o755); err != nil {
			return nil, fmt.Errorf("profile dir: %w", err)
		}
		env.AdminAddr = profileAdminAddr
	}
	for r := 0; r < o.Rounds; r++ {
		for _, name := range Rotation(names, r) {
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			o.Log.Info("scenario", zap.Int("round", r+1), zap.Int("rounds", o.Rounds), zap.String("scenario", name))
			obs, warns, err := runScenario(ctx, o, env, byName[name], r)
			for _, w := range warns {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("round %d %s: %s", r+1, name, w))
				o.Log.Warn(w, zap.Int("round", r+1), zap.String("scenario", name))
			}
			if err != nil {
				return rep, fmt.Errorf("round %d, scenario %s: %w", r+1, name, err)
			}
			for _, ob := range obs {
				rep.Results.Add(r, name, ob.Metric, ob.Value)
			}
		}
	}
	rep.Elapsed = time.Since(rep.Started)
	return rep, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// runScenario builds the pod pair, sets up the scenario, runs every test and removes everything.
func runScenario(ctx context.Context, o Options, env *Env, sc Scenario, round int) (obs []Observation, warns []string, err error) {
	prefix := o.PodPrefix
	if prefix == "" {
		prefix = "mcb"
	}
	id := prefix + randHex(3)
	client, err := podnet.NewPod(id + "-c")
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if cerr := client.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	server, err := podnet.NewPod(id + "-s")
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if cerr := server.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if err := podnet.Link(client, server, ClientPrefix, ServerPrefix); err != nil {
		return nil, nil, err
	}
	for _, p := range []*podnet.Pod{client, server} {
		if err := tuneNetns(p); err != nil {
			return nil, nil, err
		}
	}
	srv, err := env.start(server, "bench-server", "--listen", fmt.Sprintf("0.0.0.0:%d", o.ServerPort))
	if err != nil {
		return nil, nil, err
	}
	defer srv.stop()
	if err := waitEvent(srv, "ready", 10*time.Second); err != nil {
		return nil, nil, fmt.Errorf("bench-server: %w", err)
	}

	ct := newConntrackSampler(client, server)
	ct.start(20 * time.Millisecond)
	teardown, err := sc.Setup(ctx, env, client, server)
	if err != nil {
		ct.stop()
		return nil, nil, err
	}
	defer func() {
		if terr := teardown(); terr != nil {
			err = errors.Join(err, fmt.Errorf("teardown %s: %w", sc.Name(), terr))
		}
	}()

	addr := netip.AddrPortFrom(server.IP, uint16(o.ServerPort)).String()
	for _, t := range o.Tests {
		if err := ctx.Err(); err != nil {
			ct.stop()
			return nil, warns, err
		}
		var prof *profiler
		if o.ProfileDir != "" && t.Name == o.ProfileTest {
			if pp, ok := sc.(proxyPods); ok {
				prof = &profiler{pods: pp.ProxyPods(client, server), roles: map[*podnet.Pod]string{client: "client", server: "server"},
					prefix: filepath.Join(o.ProfileDir, fmt.Sprintf("%s-r%d-%s", sc.Name(), round+1, t.Name)), seconds: max(1, int(o.Duration.Seconds()))}
			}
		}
		res, cpuNs, err := runTest(ctx, o, env, client, server, addr, t, prof)
		if prof != nil {
			files, perr := prof.wait()
			if perr != nil {
				warns = append(warns, "profile: "+perr.Error())
			}
			for _, f := range files {
				o.Log.Info("proxy CPU profile", zap.String("file", f))
			}
		}
		if err != nil {
			ct.stop()
			return nil, warns, fmt.Errorf("%s: %w", t.Name, err)
		}
		if res.Errors > 0 {
			warns = append(warns, fmt.Sprintf("%s: %d errors, first: %s", t.Name, res.Errors, res.FirstError))
		}
		o.Log.Debug("test", zap.String("test", t.Name), zap.Float64("rate", res.Rate()), zap.Int64("cpu_ns", cpuNs))
		obs = append(obs, Observe(t, res, cpuNs)...)
	}
	peak, ctErr := ct.stop()
	if ctErr != nil {
		warns = append(warns, "conntrack count: "+ctErr.Error())
	}
	obs = append(obs, Observation{metricConntrack, float64(peak)})
	return obs, warns, nil
}

// tuneNetns gives every pod the same client-friendly TCP settings so that a new-connection test is not limited by
// ephemeral ports in TIME_WAIT: a wide port range and TIME_WAIT reuse for outgoing connections.
func tuneNetns(p *podnet.Pod) error {
	return p.Do(func() error {
		for k, v := range map[string]string{
			"/proc/sys/net/ipv4/ip_local_port_range": "10000 65000",
			"/proc/sys/net/ipv4/tcp_tw_reuse":        "1",
		} {
			if err := os.WriteFile(k, []byte(v), 0); err != nil {
				return fmt.Errorf("pod %s: set %s: %w", p.Name, filepath.Base(k), err)
			}
		}
		return nil
	})
}

// event is a line bench-server / bench-client print on stdout.
type event struct {
	Event  string  `json:"event"`
	Result *Result `json:"result,omitempty"`
	Addr   string  `json:"addr,omitempty"`
	Error  string  `json:"error,omitempty"`
}

func waitEvent(p *process, want string, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				_ = p.wait(time.Second)
				return fmt.Errorf("exited before %q: %v: %s", want, p.err, p.stderrTail())
			}
			var ev event
			if json.Unmarshal([]byte(line), &ev) == nil && ev.Event == want {
				return nil
			}
		case <-timer.C:
			return fmt.Errorf("no %q after %s: %s", want, d, p.stderrTail())
		}
	}
}

// runTest runs one bench-client in the client pod and returns its result and the CPU time both pods used during
// the measured window (cgroup v2 cpu.stat usage: client, server and any sidecar living in the pods).
func runTest(ctx context.Context, o Options, env *Env, client, server *podnet.Pod, addr string, t Test, prof *profiler) (Result, int64, error) {
	args := []string{"bench-client", "--mode", t.Mode, "--addr", addr, "--size", strconv.Itoa(t.Size),
		"--conns", strconv.Itoa(t.Conns), "--duration", o.Duration.String(), "--warmup", o.Warmup.String()}
	p, err := env.start(client, args...)
	if err != nil {
		return Result{}, 0, err
	}
	defer p.stop()
	var cpu0, cpu1 int64
	var started, ended bool
	var res *Result
	timeout := time.NewTimer(o.Warmup + o.Duration + 20*time.Second)
	defer timeout.Stop()
	cgroups := []string{client.CgroupDir, server.CgroupDir}
loop:
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				break loop
			}
			var ev event
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				return Result{}, 0, fmt.Errorf("bench-client printed %q: %w", line, err)
			}
			switch ev.Event {
			case EventStart:
				cpu0, started = cgroupUsage(cgroups), true
				if prof != nil {
					prof.start()
				}
			case EventEnd:
				cpu1, ended = cgroupUsage(cgroups), true
			case "result":
				res = ev.Result
			case "error":
				return Result{}, 0, fmt.Errorf("bench-client: %s", ev.Error)
			}
		case <-timeout.C:
			return Result{}, 0, fmt.Errorf("bench-client did not finish: %s", p.stderrTail())
		case <-ctx.Done():
			return Result{}, 0, ctx.Err()
		}
	}
	if err := p.wait(5 * time.Second); err != nil {
		return Result{}, 0, fmt.Errorf("bench-client %s: %w: %s", strings.Join(args[1:], " "), err, p.stderrTail())
	}
	if res == nil {
		return Result{}, 0, fmt.Errorf("bench-client printed no result: %s", p.stderrTail())
	}
	var cpu int64
	if started && ended && cpu0 >= 0 && cpu1 >= cpu0 {
		cpu = cpu1 - cpu0
	}
	return *res, cpu, nil
}

// cgroupUsage sums usage_usec of cpu.stat over dirs, in nanoseconds; -1 if any is unreadable.
func cgroupUsage(dirs []string) int64 {
	var sum int64
	for _, d := range dirs {
		data, err := os.ReadFile(filepath.Join(d, "cpu.stat"))
		if err != nil {
			return -1
		}
		found := false
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
				n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				if err != nil {
					return -1
				}
				sum += n * 1000
				found = true
			}
		}
		if !found {
			return -1
		}
	}
	return sum
}

// conntrackSampler polls the per-netns nf_conntrack_count of the pods and keeps the peak of their sum. The file is
// opened from inside each netns (a net sysctl reports the netns of the opener) and then read from any thread. A
// kernel without conntrack has no such file: the count is 0.
type conntrackSampler struct {
	pods  []*podnet.Pod
	files []*os.File
	peak  atomic.Int64
	done  chan struct{}
	wg    sync.WaitGroup
	err   error
}

func newConntrackSampler(pods ...*podnet.Pod) *conntrackSampler {
	return &conntrackSampler{pods: pods, files: make([]*os.File, len(pods)), done: make(chan struct{})}
}

const conntrackCountPath = "/proc/sys/net/netfilter/nf_conntrack_count"

func (s *conntrackSampler) sample() {
	var sum int64
	for i, p := range s.pods {
		if s.files[i] == nil {
			_ = p.Do(func() error {
				f, err := os.Open(conntrackCountPath)
				if err == nil {
					s.files[i] = f
				} else if !errors.Is(err, os.ErrNotExist) && s.err == nil {
					s.err = err
				}
				return nil
			})
		}
		f := s.files[i]
		if f == nil {
			continue
		}
		var buf [32]byte
		n, err := f.ReadAt(buf[:], 0)
		if n == 0 && err != nil {
			if s.err == nil {
				s.err = err
			}
			continue
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(buf[:n])), 10, 64)
		if err == nil {
			sum += v
		}
	}
	if sum > s.peak.Load() {
		s.peak.Store(sum)
	}
}

func (s *conntrackSampler) start(every time.Duration) {
	s.sample()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-t.C:
				s.sample()
			}
		}
	}()
}

// stop ends sampling (one last sample) and returns the peak. Idempotent.
func (s *conntrackSampler) stop() (int64, error) {
	select {
	case <-s.done:
		return s.peak.Load(), s.err
	default:
	}
	close(s.done)
	s.wg.Wait()
	s.sample()
	for i, f := range s.files {
		if f != nil {
			f.Close()
			s.files[i] = nil
		}
	}
	return s.peak.Load(), s.err
}

// profiler fetches /debug/pprof/profile from the proxies' admin address inside their pods' netns.
type profiler struct {
	pods    []*podnet.Pod
	roles   map[*podnet.Pod]string
	prefix  string
	seconds int
	wg      sync.WaitGroup
	mu      sync.Mutex
	files   []string
	errs    []error
	started bool
}

func (p *profiler) start() {
	p.started = true
	for _, pod := range p.pods {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			file := p.prefix + "-" + p.roles[pod] + ".pprof"
			err := fetchProfile(pod, p.seconds, file)
			p.mu.Lock()
			defer p.mu.Unlock()
			if err != nil {
				p.errs = append(p.errs, fmt.Errorf("pod %s: %w", pod.Name, err))
			} else {
				p.files = append(p.files, file)
			}
		}()
	}
}

func (p *profiler) wait() ([]string, error) {
	p.wg.Wait()
	if !p.started {
		return nil, errors.New("the measured window never started")
	}
	return p.files, errors.Join(p.errs...)
}

func fetchProfile(pod *podnet.Pod, seconds int, file string) error {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := pod.Do(func() error {
			d := dialer()
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: time.Duration(seconds+15) * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", profileAdminAddr, seconds))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET profile: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
