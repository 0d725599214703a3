// Package demo is `meshcap demo`: two pods made of network namespaces and cgroups, eBPF capture on the client
// pod, the meshcap proxy as its sidecar, requests that show the capture, and a full cleanup.
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
	log            *zap.Logger
	out            io.Writer
	o              Options
	client, server *podnet.Pod
	servers        []*http.Server
	attached       bool
	proxy          *exec.Cmd
	proxyDone      chan error
	proxyLog       *logBuffer
	proxyStopped   bool
	workDir        string
}

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
	for _, port := range []int{8080, 9090} {
		ln, err := d.server.Listen(fmt.Sprintf("0.0.0.0:%d", port))
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: http.HandlerFunc(hello), ReadHeaderTimeout: 5 * time.Second}
		d.servers = append(d.servers, srv)
		go func() { _ = srv.Serve(ln) }()
	}
	d.say("   HTTP servers in the server pod on :8080 and :9090")
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
	d.say("\n== capture: meshcap %s", strings.Join(args, " "))
	d.attached = true // detach is idempotent: undo even a half-done attach
	if _, err := d.meshcap(ctx, args...); err != nil {
		return err
	}
	d.say("   connect4, sockops, getsockopt and getpeername4 programs attached to the client pod's cgroup")
	return nil
}

func (d *run) startProxy(ctx context.Context) error {
	stats := filepath.Join(d.workDir, "proxy-stats.json")
	d.proxy = exec.Command(d.o.Meshcap, "proxy", "--log-connections", "--no-inbound", "--stats-file", stats)
	d.proxyLog = &logBuffer{}
	d.proxy.Stdout, d.proxy.Stderr = d.proxyLog, d.proxyLog
	if err := d.client.Start(d.proxy, nil); err != nil {
		return err
	}
	d.proxyDone = make(chan error, 1)
	go func() { d.proxyDone <- d.proxy.Wait() }()
	if err := d.client.WaitListening(ctx, 15001); err != nil {
		return fmt.Errorf("proxy did not start: %w\n%s", err, d.proxyLog.String())
	}
	d.say("\n== sidecar: meshcap proxy started as root in the client pod, listening on 127.0.0.1:15001, now uid %s", procUID(d.proxy.Process.Pid))
	return nil
}

func (d *run) traffic(ctx context.Context) error {
	var urls []string
	for i := 0; i < d.o.Requests; i++ {
		urls = append(urls, "http://198.18.0.2:8080/", "http://198.18.1.2:9090/")
	}
	d.say("\n== requests from an app in the client pod (uid 2000, in the captured cgroup)")
	if err := d.clientRun(ctx, &podnet.Cred{UID: 2000, GID: 2000}, urls...); err != nil {
		return err
	}
	d.say("\n== the same request as uid 1337 (the proxy's own uid): exempt, so it goes direct")
	if err := d.clientRun(ctx, &podnet.Cred{UID: 1337, GID: 1337}, "http://198.18.0.2:8080/"); err != nil {
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
	out, err := d.meshcap(ctx, "status")
	d.say("\n== meshcap status (while capture is attached)")
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		d.say("   %s", line)
	}
	if err != nil {
		return err
	}
	d.stopProxy() // its final stats write happens on a graceful stop
	d.say("\n== what the proxy relayed (its log; each original destination came from SO_ORIGINAL_DST, answered by BPF)")
	for _, line := range strings.Split(d.proxyLog.String(), "\n") {
		if strings.Contains(line, "original_dst") {
			d.say("   %s", strings.TrimSpace(line))
		}
	}
	stats, err := os.ReadFile(filepath.Join(d.workDir, "proxy-stats.json"))
	if err != nil {
		return fmt.Errorf("read proxy stats: %w", err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, stats); err != nil {
		return fmt.Errorf("proxy stats %q: %w", stats, err)
	}
	d.say("   counters: %s", compact.String())
	d.say("   the proxy's own upstream connections ran as uid 1337: exempt from capture, so no loop")
	return nil
}

// stopProxy stops the proxy gracefully (SIGINT: drain, final stats write), killing it after 5 s. Idempotent.
func (d *run) stopProxy() {
	if d.proxy == nil || d.proxy.Process == nil || d.proxyStopped {
		return
	}
	d.proxyStopped = true
	_ = d.proxy.Process.Signal(os.Interrupt)
	select {
	case <-d.proxyDone:
	case <-time.After(5 * time.Second):
		_ = d.proxy.Process.Kill()
		<-d.proxyDone
	}
	d.say("   proxy stopped")
}

// cleanup undoes every step that ran, in reverse order; each undo is safe to repeat.
func (d *run) cleanup() error {
	var errs []error
	d.say("\n== cleanup")
	d.stopProxy()
	if d.attached {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if _, err := d.meshcap(ctx, "ebpf", "detach", "--cgroup", d.client.CgroupDir); err != nil {
			errs = append(errs, err)
		} else {
			d.say("   capture detached")
		}
		cancel()
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
