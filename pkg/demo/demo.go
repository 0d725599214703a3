// Package demo is `meshcap demo`: two pods made of network namespaces and cgroups, each with the meshcap proxy as
// its sidecar; eBPF outbound capture on the client pod and inbound capture on the server pod, so that a request
// takes the full two-sidecar path (app -> client sidecar 15001 -> server sidecar 15006 -> app, which sees
// 127.0.0.6), one excluded port going straight to the app; then a full cleanup.
//
// Invariants: the demo drives the meshcap binary's own subcommands (ebpf attach/detach, proxy, status), so it shows
// exactly what a user runs; everything it creates is undone before Run returns, on success, error or Ctrl-C.
package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// Options tune the demo.
type Options struct {
	Meshcap  string        // path of the meshcap binary (the demo re-executes it)
	Requests int           // requests per destination
	Timeout  time.Duration // overall limit
	Keep     bool          // wait for Ctrl-C before cleaning up
}

var (
	clientAddr = netip.MustParsePrefix("198.18.0.1/24")
	serverAddr = netip.MustParsePrefix("198.18.0.2/24")
	serverAlt  = netip.MustParsePrefix("198.18.1.2/32")
)

// Run builds the pods, captures, sends traffic, prints what happened and removes everything.
func Run(ctx context.Context, log *zap.Logger, out io.Writer, o Options) (err error) {
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	d := &run{log: log, out: out, o: o}
	defer func() { err = errors.Join(err, d.cleanup()) }()
	steps := []func(context.Context) error{d.buildPods, d.startServers, d.attach, d.startProxy, d.traffic, d.report}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return err
		}
	}
	if o.Keep {
		d.say("\nleaving everything in place; press Ctrl-C to clean up (try: meshcap status)")
		<-ctx.Done()
	}
	return nil
}

type run struct {
	log                          *zap.Logger
	out                          io.Writer
	o                            Options
	client, server               *podnet.Pod
	servers                      []*http.Server
	clientAttached, serverAttach bool
	sidecars                     []*sidecar // client's, then server's
	workDir                      string
}

// sidecar is one pod's meshcap proxy.
type sidecar struct {
	role    string // "client" or "server"
	pod     *podnet.Pod
	cmd     *exec.Cmd
	done    chan error
	log     *logBuffer
	stopped bool
	stats   string // --stats-file
}

// The server pod's inbound capture: every port except excludedPort (istio's -b '*' -d).
const (
	capturedPort = 8080
	excludedPort = 9090
)

func (d *run) say(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

func (d *run) buildPods(context.Context) error {
	suffix := fmt.Sprintf("%04x", os.Getpid()&0xffff)
	var err error
	if d.client, err = podnet.NewPod("md" + suffix + "-client"); err != nil {
		return err
	}
	if d.server, err = podnet.NewPod("md" + suffix + "-server"); err != nil {
		return err
	}
	if err := podnet.Link(d.client, d.server, clientAddr, serverAddr); err != nil {
		return err
	}
	if err := d.server.AddAddr(serverAlt); err != nil {
		return err
	}
	if d.workDir, err = os.MkdirTemp("", "meshcap-demo-"); err != nil {
		return fmt.Errorf("work dir: %w", err)
	}
	if err := os.Chmod(d.workDir, 0o777); err != nil { // the proxy writes its stats here as uid 1337
		return fmt.Errorf("work dir: %w", err)
	}
	d.say("== pods (network namespace + cgroup v2, joined by a veth)")
	d.say("   client  netns %-28s cgroup %s  ip %s", d.client.NetnsPath, d.client.CgroupDir, d.client.IP)
	d.say("   server  netns %-28s cgroup %s  ip %s and %s", d.server.NetnsPath, d.server.CgroupDir, d.server.IP, serverAlt.Addr())
	return nil
}

func (d *run) startServers(context.Context) error {
	for _, port := range []int{capturedPort, excludedPort} {
		ln, err := d.server.Listen(fmt.Sprintf("0.0.0.0:%d", port))
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: http.HandlerFunc(hello), ReadHeaderTimeout: 5 * time.Second}
		d.servers = append(d.servers, srv)
		go func() { _ = srv.Serve(ln) }()
	}
	d.say("   HTTP servers in the server pod on :%d and :%d (they answer with the addresses they see)", capturedPort, excludedPort)
	return nil
}

func hello(w http.ResponseWriter, r *http.Request) {
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	fmt.Fprintf(w, "hello from %v, you are %s\n", local, r.RemoteAddr)
}

func (d *run) meshcap(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, d.o.Meshcap, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("meshcap %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func (d *run) attach(ctx context.Context) error {
	args := []string{"ebpf", "attach", "--cgroup", d.client.CgroupDir, "-i", "*"}
	d.say("\n== capture, client pod (outbound): meshcap %s", strings.Join(args, " "))
	d.clientAttached = true // detach is idempotent: undo even a half-done attach
	if _, err := d.meshcap(ctx, args...); err != nil {
		return err
	}
	d.say("   connect4, sockops, getsockopt and getpeername4 programs attached to the client pod's cgroup")
	args = []string{"ebpf", "attach", "--cgroup", d.server.CgroupDir, "--netns", d.server.NetnsPath, "-b", "*", "-d", fmt.Sprint(excludedPort)}
	d.say("\n== capture, server pod (inbound): meshcap %s", strings.Join(quote(args), " "))
	d.serverAttach = true
	if _, err := d.meshcap(ctx, args...); err != nil {
		return err
	}
	d.say("   sk_lookup program attached to the server pod's netns: new inbound TCP connections go to its sidecar's")
	d.say("   listener on 15006, except port %d (-d) and 15008 (-e); no NAT, no conntrack", excludedPort)
	return nil
}

func quote(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "*" {
			a = "'*'"
		}
		out[i] = a
	}
	return out
}

func (d *run) startProxy(ctx context.Context) error {
	for _, pod := range []*podnet.Pod{d.client, d.server} {
		sc := &sidecar{role: "client", pod: pod, log: &logBuffer{}, done: make(chan error, 1)}
		if pod == d.server {
			sc.role = "server"
		}
		sc.stats = filepath.Join(d.workDir, sc.role+"-proxy-stats.json")
		sc.cmd = exec.Command(d.o.Meshcap, "proxy", "--log-connections", "--stats-file", sc.stats)
		sc.cmd.Stdout, sc.cmd.Stderr = sc.log, sc.log
		if err := pod.Start(sc.cmd, nil); err != nil {
			return err
		}
		d.sidecars = append(d.sidecars, sc)
		go func() { sc.done <- sc.cmd.Wait() }()
		for _, port := range []int{15001, 15006} {
			if err := pod.WaitListening(ctx, port); err != nil {
				return fmt.Errorf("%s proxy did not start: %w\n%s", sc.role, err, sc.log.String())
			}
		}
		// Registration (before the privilege drop) is logged before "dropped privileges".
		for deadline := time.Now().Add(5 * time.Second); !strings.Contains(sc.log.String(), "dropped privileges") && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		registered := ""
		if strings.Contains(sc.log.String(), "registered the inbound listener") {
			registered = "; it registered its 15006 listener with the pod's inbound capture"
		}
		d.say("\n== sidecar: meshcap proxy in the %s pod, on 0.0.0.0:15001 and 0.0.0.0:15006, started as root, now uid %s%s",
			sc.role, procUID(sc.cmd.Process.Pid), registered)
	}
	return nil
}

func (d *run) traffic(ctx context.Context) error {
	captured := fmt.Sprintf("http://%s:%d/", serverAddr.Addr(), capturedPort)
	excluded := fmt.Sprintf("http://%s:%d/", serverAlt.Addr(), excludedPort)
	var urls []string
	for i := 0; i < d.o.Requests; i++ {
		urls = append(urls, captured, excluded)
	}
	d.say("\n== requests from an app in the client pod (uid 2000, in the captured cgroup)")
	d.say("   :%d  app -> client sidecar 15001 -> server sidecar 15006 -> app, which sees the sidecar's 127.0.0.6", capturedPort)
	d.say("   :%d  app -> client sidecar 15001 -> app directly (excluded from inbound capture), which sees %s", excludedPort, d.client.IP)
	if err := d.clientRun(ctx, &podnet.Cred{UID: 2000, GID: 2000}, urls...); err != nil {
		return err
	}
	d.say("\n== the same request as uid 1337 (the proxy's own uid): exempt from outbound capture, so it leaves the client")
	d.say("   pod directly; inbound capture in the server pod still hands it to the server's sidecar")
	if err := d.clientRun(ctx, &podnet.Cred{UID: 1337, GID: 1337}, captured); err != nil {
		return err
	}
	return nil
}

func (d *run) clientRun(ctx context.Context, cred *podnet.Cred, urls ...string) error {
	cmd := exec.CommandContext(ctx, d.o.Meshcap, append([]string{"demo", "client"}, urls...)...)
	var buf strings.Builder
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := d.client.Start(cmd, cred); err != nil {
		return err
	}
	err := cmd.Wait()
	for _, line := range strings.Split(strings.TrimRight(buf.String(), "\n"), "\n") {
		d.say("   %s", line)
	}
	if err != nil {
		return fmt.Errorf("demo client: %w", err)
	}
	return nil
}

func (d *run) report(ctx context.Context) error {
	out, err := d.meshcap(ctx, "status", "--netns", d.server.NetnsPath)
	d.say("\n== meshcap status --netns %s (while capture is attached)", d.server.NetnsPath)
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		d.say("   %s", line)
	}
	if err != nil {
		return err
	}
	for _, sc := range d.sidecars {
		sc.stop(d) // its final stats write happens on a graceful stop
	}
	for _, sc := range d.sidecars {
		how := "outbound: from SO_ORIGINAL_DST, answered by BPF"
		if sc.role == "server" {
			how = "inbound: the accepted socket's own local address, left untouched by sk_lookup"
		}
		d.say("\n== what the %s sidecar relayed (its log; original destination %s)", sc.role, how)
		for _, line := range strings.Split(sc.log.String(), "\n") {
			if strings.Contains(line, "original_dst") {
				d.say("   %s", strings.TrimSpace(line))
			}
		}
		stats, err := os.ReadFile(sc.stats)
		if err != nil {
			return fmt.Errorf("read %s proxy stats: %w", sc.role, err)
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, stats); err != nil {
			return fmt.Errorf("%s proxy stats %q: %w", sc.role, stats, err)
		}
		d.say("   counters: %s", compact.String())
	}
	d.say("\n   the sidecars' own upstream connections ran as uid 1337 (exempt from outbound capture) and the server")
	d.say("   sidecar's came from 127.0.0.6 (never steered inbound), so no loop")
	return nil
}

// stop stops the proxy gracefully (SIGINT: drain, final stats write), killing it after 5 s. Idempotent.
func (sc *sidecar) stop(d *run) {
	if sc.cmd == nil || sc.cmd.Process == nil || sc.stopped {
		return
	}
	sc.stopped = true
	_ = sc.cmd.Process.Signal(os.Interrupt)
	select {
	case <-sc.done:
	case <-time.After(5 * time.Second):
		_ = sc.cmd.Process.Kill()
		<-sc.done
	}
	d.say("   %s proxy stopped", sc.role)
}

// cleanup undoes every step that ran, in reverse order; each undo is safe to repeat.
func (d *run) cleanup() error {
	var errs []error
	d.say("\n== cleanup")
	for i := len(d.sidecars) - 1; i >= 0; i-- {
		d.sidecars[i].stop(d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if d.serverAttach {
		if _, err := d.meshcap(ctx, "ebpf", "detach", "--cgroup", d.server.CgroupDir, "--netns", d.server.NetnsPath); err != nil {
			errs = append(errs, err)
		} else {
			d.say("   server pod capture detached")
		}
	}
	if d.clientAttached {
		if _, err := d.meshcap(ctx, "ebpf", "detach", "--cgroup", d.client.CgroupDir, "--netns", d.client.NetnsPath); err != nil {
			errs = append(errs, err)
		} else {
			d.say("   client pod capture detached")
		}
	}
	for _, srv := range d.servers {
		_ = srv.Close()
	}
	for _, p := range []*podnet.Pod{d.client, d.server} {
		if p != nil {
			if err := p.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if d.workDir != "" {
		_ = os.RemoveAll(d.workDir)
	}
	if len(errs) == 0 {
		d.say("   pods, cgroups and pins removed")
	}
	return errors.Join(errs...)
}

func procUID(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Uid:" {
			return f[1]
		}
	}
	return "?"
}
