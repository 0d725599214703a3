package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/hostfs"
	"github.com/meshcap/meshcap/pkg/podnet"
)

// diagModules are the sock_diag modules Debian builds as modules; inbound registration must not depend on them
// (a host may have module autoload off, or not ship them).
var diagModules = []string{"tcp_diag", "inet_diag"}

// testModules are what TestInboundTwoSidecar's fixtures use themselves (iptables-nft's nat table).
var testModules = []string{"nf_tables", "nft_chain_nat", "nft_compat"}

// inboundWithoutAutoload runs the inbound two-sidecar test with the kernel's module autoload pointed at nothing
// and the sock_diag modules unloaded. VM only: it changes a kernel-wide setting.
func (g *guest) inboundWithoutAutoload() error {
	const knob = "/proc/sys/kernel/modprobe"
	// The test's own fixtures (an ISTIO chain made with iptables-nft in another pod) need nf_tables: loaded
	// first, so that only meshcap's independence from modules is measured.
	for _, m := range testModules {
		if out, err := exec.Command("modprobe", m).CombinedOutput(); err != nil {
			return fmt.Errorf("modprobe %s (for the test's fixtures): %v: %s", m, err, out)
		}
	}
	old, err := os.ReadFile(knob)
	if err != nil {
		return err
	}
	if err := os.WriteFile(knob, []byte("/nonexistent/modprobe\n"), 0); err != nil {
		return err
	}
	defer os.WriteFile(knob, old, 0)
	for _, m := range diagModules {
		_ = exec.Command("rmmod", m).Run()
	}
	before := loadedModules()
	for _, m := range diagModules {
		if before[m] {
			return fmt.Errorf("module %s still loaded after rmmod", m)
		}
	}
	res, missing, err := g.goTests([]string{"TestInboundTwoSidecar"})
	if len(res) != 1 || !res[0].OK() {
		return fmt.Errorf("TestInboundTwoSidecar with module autoload off: %v %v %v", res, missing, err)
	}
	var added []string
	for m := range loadedModules() {
		if !before[m] {
			added = append(added, m)
		}
	}
	if len(added) > 0 {
		return fmt.Errorf("modules loaded although autoload was off: %v", added)
	}
	return nil
}

// loadedModules reads /proc/modules.
func loadedModules() map[string]bool {
	data, _ := os.ReadFile("/proc/modules")
	mods := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			mods[f[0]] = true
		}
	}
	return mods
}

// demo runs `meshcap demo`, which asserts its own path (exit status) and must print a captured request.
func (g *guest) demo() error {
	out, err := g.command(5*time.Minute, g.bin("meshcap"), "demo")
	if err != nil {
		return err
	}
	if !strings.Contains(out, "CAPTURED") {
		return errors.New("demo printed no captured request")
	}
	return nil
}

var initModeRe = regexp.MustCompile(`capture set up.*"mode": "(\w+)"`)

// relayDst is the server pod's address the app dials in autoRelay.
const relayDst = "198.18.0.2:8080"

// autoRelay captures an app pod with `meshcap init --mode auto` (istio-init's outbound arguments), checks the
// mode it chose, and sends a request from the app (uid 2000) through `meshcap proxy` to a server pod: it must
// be relayed to its exact original destination. Without cgroup2 the pods are bare network namespaces.
func (g *guest) autoRelay(wantMode string) error {
	app, cleanup, err := g.relayPods()
	defer cleanup()
	if err != nil {
		return err
	}
	pin, unmount, err := privateBPFFS()
	if err != nil {
		return err
	}
	defer unmount()
	defer exec.Command(g.bin("meshcap"), "ebpf", "detach", "--pin-dir", pin).Run()

	args := []string{"init", "--mode", "auto", "--pin-root", pin, "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", ""}
	if app.CgroupDir != "" {
		args = append(args, "--cgroup", app.CgroupDir)
	}
	_, log, err := runInPod(app, nil, g.bin("meshcap"), args...)
	fmt.Fprintf(g.out, "meshcap init --mode auto:\n%s\n", log)
	if err != nil {
		return fmt.Errorf("meshcap init: %w", err)
	}
	if m := initModeRe.FindStringSubmatch(log); m == nil || m[1] != wantMode {
		return fmt.Errorf("meshcap init set up %v, want mode %s", m, wantMode)
	}
	proxy, err := startInPod(app, nil, g.bin("meshcap"), "proxy", "--pin-dir", pin)
	if err != nil {
		return err
	}
	defer stop(proxy)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := app.WaitListening(ctx, 15001); err != nil {
		return err
	}
	return g.dialRelayed(app)
}

// relayPods makes the app pod and a server pod, joined by a veth, with an echo server on relayDst. cleanup undoes
// whatever was made, also on error.
func (g *guest) relayPods() (app *podnet.Pod, cleanup func(), err error) {
	var undo []func()
	cleanup = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	sfx := fmt.Sprintf("%04x", os.Getpid()&0xffff)
	if app, err = newGuestPod("mx" + sfx + "-app"); err != nil {
		return nil, cleanup, err
	}
	undo = append(undo, func() { app.Close() })
	srv, err := newGuestPod("mx" + sfx + "-srv")
	if err != nil {
		return nil, cleanup, err
	}
	undo = append(undo, func() { srv.Close() })
	if err = podnet.Link(app, srv, netip.MustParsePrefix("198.18.0.1/24"), netip.MustParsePrefix("198.18.0.2/24")); err != nil {
		return nil, cleanup, err
	}
	server, err := startInPod(srv, nil, g.bin("nettool"), "serve", relayDst)
	if err != nil {
		return nil, cleanup, err
	}
	undo = append(undo, func() { stop(server) })
	return app, cleanup, nil
}

// dialRelayed dials relayDst from the app pod as uid 2000: the connection must go through the proxy (the server
// sees another peer than the client's own address) and reach exactly relayDst, which getpeername also shows.
func (g *guest) dialRelayed(app *podnet.Pod) error {
	out, stderr, err := runInPod(app, &podnet.Cred{UID: 2000, GID: 2000}, g.bin("nettool"), "dial", relayDst, "-send", "1000", "-timeout", "10s")
	var r struct {
		Reached, Peer, Local, Remote string
		OK                           bool
	}
	if jerr := json.Unmarshal([]byte(out), &r); err != nil || jerr != nil {
		return fmt.Errorf("dial %s: %v %v: %s %s", relayDst, err, jerr, out, stderr)
	}
	if !r.OK || r.Reached != relayDst || r.Remote != relayDst || r.Peer == r.Local {
		return fmt.Errorf("dial %s: not relayed to the exact original destination: %+v", relayDst, r)
	}
	fmt.Fprintf(g.out, "relayed: %+v\n", r)
	return nil
}

// newGuestPod makes a pod: netns + cgroup v2 when cgroup2 is mounted, else a bare netns (loopback up).
func newGuestPod(name string) (*podnet.Pod, error) {
	if _, err := hostfs.Cgroup2Root(); err == nil {
		return podnet.NewPod(name)
	}
	p := &podnet.Pod{Name: name, NetnsPath: filepath.Join(podnet.NetnsDir, name)}
	for _, args := range [][]string{{"netns", "add", name}, {"-n", name, "link", "set", "lo", "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			p.Close()
			return nil, fmt.Errorf("ip %v: %w: %s", args, err, out)
		}
	}
	return p, nil
}

// startInPod starts a program in the pod (in its cgroup when it has one), as cred when given.
func startInPod(p *podnet.Pod, cred *podnet.Cred, name string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stdout
	return cmd, startCmd(p, cred, cmd)
}

func startCmd(p *podnet.Pod, cred *podnet.Cred, cmd *exec.Cmd) error {
	if p.CgroupDir != "" {
		return p.Start(cmd, cred)
	}
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: cred.UID, Gid: cred.GID, Groups: []uint32{}}}
	}
	return p.Do(cmd.Start)
}

// runInPod runs a program in the pod to completion (30 s at most) and returns its stdout and stderr.
func runInPod(p *podnet.Pod, cred *podnet.Cred, name string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := startCmd(p, cred, cmd); err != nil {
		return "", "", err
	}
	err := cmd.Wait()
	return out.String(), errb.String(), err
}

// stop kills a process this run started (by its pid) and reaps it.
func stop(cmd *exec.Cmd) {
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

// privateBPFFS mounts a bpffs instance of its own and returns a pin directory in it and the undo.
func privateBPFFS() (string, func(), error) {
	mnt, err := os.MkdirTemp("", "matrix-bpffs-")
	if err != nil {
		return "", nil, err
	}
	if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(mnt)
		return "", nil, fmt.Errorf("mount bpffs: %w", err)
	}
	return filepath.Join(mnt, "meshcap"), func() { _ = unix.Unmount(mnt, unix.MNT_DETACH); os.Remove(mnt) }, nil
}
