package test

// End-to-end test of DaemonSet mode: `meshcap agent --cgroup <kubepods root>` in the background, and the CNI chain
// (bridge + host-local, then meshcap-cni) driven by cnitool exactly as a container runtime drives it, against
// netns pods whose cgroups live under that root.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/cni"
	"github.com/meshcap/meshcap/pkg/hostfs"
	"github.com/meshcap/meshcap/pkg/podnet"
	"github.com/meshcap/meshcap/proxy"
)

// holdConnEnv makes the test binary a long-lived client (re-executed inside a pod): it connects to the address in
// the variable, prints {"local","peer"} (peer = the client address the echo server saw), then for each stdin line
// sends it and prints the echoed line. It exits at stdin EOF.
const holdConnEnv = "MESHCAP_E2E_HOLDCONN"

func init() {
	if addr := os.Getenv(holdConnEnv); addr != "" {
		if err := holdConn(addr); err != nil {
			fmt.Fprintln(os.Stderr, "holdconn:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

func holdConn(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	greeting, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	f := strings.Fields(greeting)
	if len(f) != 2 {
		return fmt.Errorf("bad greeting %q", greeting)
	}
	hello, _ := json.Marshal(map[string]string{"local": conn.LocalAddr().String(), "peer": f[1]})
	fmt.Println(string(hello))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if _, err := fmt.Fprintln(conn, in.Text()); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		back, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("echo: %w", err)
		}
		fmt.Print(back)
	}
	return in.Err()
}

// heldConn is a holdConn client running in a pod.
type heldConn struct {
	t            *testing.T
	cmd          *exec.Cmd
	stdin        *os.File
	out          *bufio.Reader
	local, peer  string
	stderr       *syncBuffer
	waitDone     chan error
	lastExchange int
	once         sync.Once
}

func startHeldConn(t *testing.T, pod *podnet.Pod, addr string) *heldConn {
	t.Helper()
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	h := &heldConn{t: t, stdin: inW, out: bufio.NewReader(outR), stderr: &syncBuffer{}, waitDone: make(chan error, 1)}
	h.cmd = exec.Command(os.Args[0])
	h.cmd.Env = append(os.Environ(), holdConnEnv+"="+addr)
	h.cmd.Stdin, h.cmd.Stdout, h.cmd.Stderr = inR, outW, h.stderr
	if err := pod.Start(h.cmd, nil); err != nil {
		t.Fatal(err)
	}
	inR.Close()
	outW.Close()
	go func() { h.waitDone <- h.cmd.Wait() }()
	t.Cleanup(func() { h.close(); outR.Close() })
	var hello struct{ Local, Peer string }
	line, err := h.readLine()
	if err != nil || json.Unmarshal([]byte(line), &hello) != nil {
		t.Fatalf("held connection to %s: %q %v; stderr: %s", addr, line, err, h.stderr.String())
	}
	h.local, h.peer = hello.Local, hello.Peer
	return h
}

// close ends the client (stdin EOF: it closes its connection) and waits for it. Idempotent.
func (h *heldConn) close() {
	h.once.Do(h.doClose)
}

func (h *heldConn) doClose() {
	h.stdin.Close()
	select {
	case err := <-h.waitDone:
		if err != nil && !h.t.Failed() {
			h.t.Errorf("held connection client: %v; stderr: %s", err, h.stderr.String())
		}
	case <-time.After(5 * time.Second):
		_ = h.cmd.Process.Kill()
		<-h.waitDone
	}
}

func (h *heldConn) readLine() (string, error) {
	type res struct {
		s   string
		err error
	}
	c := make(chan res, 1)
	go func() { s, err := h.out.ReadString('\n'); c <- res{strings.TrimSpace(s), err} }()
	select {
	case r := <-c:
		return r.s, r.err
	case <-time.After(10 * time.Second):
		return "", errors.New("timeout")
	}
}

// exchange sends a line over the held connection and checks that it comes back.
func (h *heldConn) exchange(what string) {
	h.t.Helper()
	h.lastExchange++
	msg := fmt.Sprintf("%s-%d", strings.ReplaceAll(what, " ", "_"), h.lastExchange)
	if _, err := fmt.Fprintln(h.stdin, msg); err != nil {
		h.t.Fatalf("held connection, %s: send: %v", what, err)
	}
	got, err := h.readLine()
	if err != nil || got != msg {
		h.t.Fatalf("held connection, %s: got %q (%v), want %q; stderr: %s", what, got, err, msg, h.stderr.String())
	}
}

// kubepodsCgroup makes a parent cgroup standing for the node's kubepods root; removed when the test ends (after
// the pods under it, whose Cleanup is registered later).
func kubepodsCgroup(t *testing.T) string {
	t.Helper()
	root, err := hostfs.Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "meshcap.slice", "mc"+randHex(3)+"-kubepods")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := os.Remove(dir)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				t.Errorf("remove cgroup %s: %v", dir, err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	return dir
}

// podUnder makes a pod whose cgroup is <parent>/<pod name> (a pod cgroup under the kubepods root).
func podUnder(t *testing.T, parent, role string) *podnet.Pod {
	t.Helper()
	return podUnderNamed(t, parent, role, "")
}

// podUnderNamed is podUnder with the cgroup directory named dir ("" = the pod's name), e.g. the kubelet's
// "pod<uid>".
func podUnderNamed(t *testing.T, parent, role, name string) *podnet.Pod {
	t.Helper()
	p := newPod(t, role)
	if name == "" {
		name = p.Name
	}
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p.CgroupDir); err != nil {
		os.Remove(dir)
		t.Fatal(err)
	}
	p.CgroupDir = dir // Close (registered by newPod) removes this one
	return p
}

// agentProc is `meshcap agent` running in the background on the host.
type agentProc struct {
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	err  error
}

// startAgent starts `meshcap agent args...` and waits until it is ready. It is killed when the test ends.
func startAgent(t *testing.T, args ...string) *agentProc {
	t.Helper()
	return startAgentUntil(t, "agent ready", args...)
}

// startAgentUntil starts `meshcap agent args...` and waits until its log says marker.
func startAgentUntil(t *testing.T, marker string, args ...string) *agentProc {
	t.Helper()
	a := &agentProc{cmd: exec.Command(meshcapBin, append([]string{"agent"}, args...)...), log: &syncBuffer{}, done: make(chan struct{})}
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.err = a.cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		select {
		case <-a.done:
		default:
			_ = a.cmd.Process.Kill()
			<-a.done
		}
		if t.Failed() {
			t.Logf("meshcap agent %q log:\n%s", args, a.log.String())
		}
	})
	deadline := time.After(60 * time.Second)
	for !strings.Contains(a.log.String(), marker) {
		select {
		case <-a.done:
			t.Fatalf("agent exited before ready: %v\n%s", a.err, a.log.String())
		case <-deadline:
			t.Fatalf("agent log without %q after 60s:\n%s", marker, a.log.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return a
}

// stop sends SIGTERM (as the kubelet does) and waits for a clean exit.
func (a *agentProc) stop(t *testing.T) {
	t.Helper()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("agent did not stop on SIGTERM:\n%s", a.log.String())
	}
	if a.err != nil {
		t.Fatalf("agent exit: %v\n%s", a.err, a.log.String())
	}
}

// add runs ADD and returns the pod's IP from the chain's result.
func (e *cniEnv) add(pod *podnet.Pod, args string) netip.Addr {
	e.t.Helper()
	out, err := e.cnitool("add", pod.NetnsPath, args, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	res, err := types100.NewResult([]byte(out))
	if err != nil {
		e.t.Fatalf("parse result: %v\n%s", err, out)
	}
	r := res.(*types100.Result)
	if len(r.IPs) != 1 {
		e.t.Fatalf("result IPs %v, want one", r.IPs)
	}
	ip, _ := netip.AddrFromSlice(r.IPs[0].Address.IP)
	return ip.Unmap()
}

// cgroupPrograms counts the outbound programs attached to a cgroup for the four outbound hooks (as `bpftool
// cgroup show`). Each pod's inbound programs (inb_*) sit on the same hooks next to them and are not counted.
func cgroupPrograms(t *testing.T, dir string) int {
	t.Helper()
	return countCgroupPrograms(t, dir, func(name string) bool { return !strings.HasPrefix(name, "inb_") },
		ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupSockOps, ebpf.AttachCGroupGetsockopt, ebpf.AttachCgroupInet4GetPeername)
}

// inboundCgroupPrograms counts the inbound programs (inb_*) attached to a cgroup.
func inboundCgroupPrograms(t *testing.T, dir string) int {
	t.Helper()
	return countCgroupPrograms(t, dir, func(name string) bool { return strings.HasPrefix(name, "inb_") },
		ebpf.AttachCGroupInet4PostBind, ebpf.AttachCGroupInet6PostBind, ebpf.AttachCGroupSockOps, ebpf.AttachCGroupGetsockopt)
}

// countCgroupPrograms counts the programs attached to dir on the given hooks whose name matches (a program gone
// meanwhile counts, as the kernel listed it).
func countCgroupPrograms(t *testing.T, dir string, match func(name string) bool, hooks ...ebpf.AttachType) int {
	t.Helper()
	n := 0
	for _, at := range hooks {
		res, err := link.QueryPrograms(link.QueryOptions{Target: mustOpenFD(t, dir), Attach: at})
		if err != nil {
			t.Fatalf("query %s programs of %s: %v", at, dir, err)
		}
		for _, p := range res.Programs {
			prog, err := ebpf.NewProgramFromID(p.ID)
			if err != nil {
				n++
				continue
			}
			info, err := prog.Info()
			prog.Close()
			if err != nil || match(info.Name) {
				n++
			}
		}
	}
	return n
}

// netnsSkLookupPrograms counts the sk_lookup programs attached in a netns.
func netnsSkLookupPrograms(t *testing.T, netnsPath string) int {
	t.Helper()
	res, err := link.QueryPrograms(link.QueryOptions{Target: mustOpenFD(t, netnsPath), Attach: ebpf.AttachSkLookup})
	if err != nil {
		t.Fatalf("query sk_lookup programs of %s: %v", netnsPath, err)
	}
	return len(res.Programs)
}

func mustOpenFD(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

func linkIDs(t *testing.T, pin string) (links, progs []uint32) {
	t.Helper()
	st, err := loader.GetStatus(pin)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Attachments) != 1 {
		t.Fatalf("status: %d attachments, want 1: %+v", len(st.Attachments), st)
	}
	for _, p := range st.Attachments[0].Programs {
		if p.Err != "" {
			t.Fatalf("status of %s: %s", p.Hook, p.Err)
		}
		links, progs = append(links, p.LinkID), append(progs, p.ProgID)
	}
	return links, progs
}

// agentCNIFixture is the chain as a runtime runs it, before the agent starts: pod A opts in, pod B and the server
// do not; meshcap-cni is installed and has recorded pod A, and nothing is attached yet.
type agentCNIFixture struct {
	e               *cniEnv
	pin, kubepods   string
	podA, podB, srv *podnet.Pod
	ipA, srvIP      netip.Addr
	agentArgs       []string
	metricsAddr     string
	step            func(what string)
}

func newAgentCNIFixture(t *testing.T) *agentCNIFixture {
	t.Helper()
	requireRoot(t)
	start := time.Now()
	f := &agentCNIFixture{step: func(what string) { t.Logf("%6.1fs %s", time.Since(start).Seconds(), what) }}
	f.pin = ebPinRoot(t)
	f.kubepods = kubepodsCgroup(t)
	f.e = newCNIEnv(t)
	f.podA, f.podB = podUnder(t, f.kubepods, "a"), podUnder(t, f.kubepods, "b")
	f.srv = newPod(t, "srv") // outside the kubepods root: a server somewhere on the pod network

	f.metricsAddr = fmt.Sprintf("127.0.0.1:%d", 20000+int(time.Now().UnixNano()%20000))
	f.agentArgs = []string{"--cgroup", f.kubepods, "--pin-dir", f.pin, "--state-dir", f.e.stateDir, "--resync", "1s",
		"--metrics-addr", f.metricsAddr}
	// No agent runs yet (meshcap-cni installed, agent container not started): pod A is only recorded, and the
	// agent programs it when it starts.
	f.step("CNI ADD before the agent runs")
	f.srvIP = f.e.add(f.srv, podArgs("default", "srv"))
	f.ipA = f.e.add(f.podA, podArgs("default", "a", "MESHCAP_ENROLL=true"))
	f.e.add(f.podB, podArgs("default", "b"))
	if got := f.e.records(); !slices.Equal(got, []string{cnitoolContainerID(f.podA.NetnsPath)}) {
		t.Fatalf("records %v, want only pod A", got)
	}
	if got := cgroupPrograms(t, f.kubepods); got != 0 {
		t.Fatalf("%d programs attached at the kubepods root before the agent runs", got)
	}
	return f
}

// TestDeployAgentCNI: agent mode end to end, on every kernel of the matrix (before Linux 5.14 the netns cookies
// come from the loader's cgroup/sock_create reader).
func TestDeployAgentCNI(t *testing.T) { deployAgentCNI(t, newAgentCNIFixture(t)) }

// TestDeployAgentCNIReader is TestDeployAgentCNI with SO_NETNS_COOKIE hidden from every process (the test, the
// CNI plugin, the agent, the proxy): they all read netns cookies with the reader, as on Linux 5.10.
func TestDeployAgentCNIReader(t *testing.T) {
	t.Setenv(loader.ProbeDisableEnv, "so_netns_cookie")
	deployAgentCNI(t, newAgentCNIFixture(t))
}

func deployAgentCNI(t *testing.T, f *agentCNIFixture) {
	e, pin, kubepods, podA, podB, srv := f.e, f.pin, f.kubepods, f.podA, f.podB, f.srv
	ipA, srvIP, agentArgs, metricsAddr, step := f.ipA, f.srvIP, f.agentArgs, f.metricsAddr, f.step
	step("start agent")
	agent := startAgent(t, agentArgs...)
	pinDir, err := loader.PinDir(kubepods, pin)
	if err != nil {
		t.Fatal(err)
	}
	if got := cgroupPrograms(t, kubepods); got != 4 {
		t.Fatalf("%d programs attached at the kubepods root, want 4", got)
	}
	cookieA, err := loader.InboundCookie(podA.NetnsPath)
	if err != nil || !hostfs.IsNetnsCookie(cookieA) {
		t.Fatalf("pod A's netns cookie %#x (%v): want a cookie", cookieA, err)
	}
	if got, err := loader.EnrolledNetns(pinDir); err != nil || !slices.Equal(got, []uint64{cookieA}) {
		t.Fatalf("enrolled netns %v (%v), want pod A's cookie %d", got, err, cookieA)
	}
	if got := netnsSkLookupPrograms(t, podA.NetnsPath); got != 1 {
		t.Errorf("pod A: %d sk_lookup programs, want 1 (inbound capture, -b '*')", got)
	}
	if got := netnsSkLookupPrograms(t, podB.NetnsPath); got != 0 {
		t.Errorf("pod B: %d sk_lookup programs, want 0", got)
	}

	step("servers and proxy")
	startEcho(t, srv, "0.0.0.0:8080")
	startEcho(t, podA, "0.0.0.0:9090")
	proxyA := startProxy(t, podA, "--pin-dir", pin)
	srvAddr := netip.AddrPortFrom(srvIP, 8080).String()
	expectDial := func(pod *podnet.Pod, addr string, captured bool, when string) {
		t.Helper()
		res, err := dial(t, pod, nil, addr, 1000)
		if err != nil {
			t.Fatalf("%s: dial %s from %s: %v", when, addr, pod.Name, err)
		}
		if res.Captured() != captured {
			t.Fatalf("%s: dial %s from %s: captured=%v, want %v (%+v)", when, addr, pod.Name, res.Captured(), captured, res)
		}
	}
	step("dials")
	expectDial(podA, srvAddr, true, "enrolled pod A")
	expectDial(podB, srvAddr, false, "pod B, not enrolled")
	// Inbound to pod A (sk_lookup, attached by the agent; the proxy registered its listener): relayed by the proxy.
	expectDial(srv, netip.AddrPortFrom(ipA, 9090).String(), true, "inbound to pod A")
	pxWaitStats(t, proxyA, "one inbound connection", func(s proxy.Snapshot) bool { return s.Inbound.Relayed >= 1 })

	// The agent's /metrics: pod A made one captured connect; of its sidecar's two upstream connects (one per relayed
	// connection) the outbound one is exempt by owner, the inbound one (from 127.0.0.6 to pod A's own IP, which the
	// agent wrote as a local address of pod A) by istio's rule 10 (loopback); pod B is not enrolled, so it has no
	// series.
	step("agent metrics")
	m := scrapeHost(t, metricsAddr)
	series := func(name, extra string) string {
		return fmt.Sprintf(`%s{cgroup="",netns_cookie="%d",pod="default/a"%s}`, name, cookieA, extra)
	}
	for k, want := range map[string]float64{
		series("meshcap_capture_connections_captured_total", ""):               1,
		series("meshcap_capture_connections_exempt_total", `,rule="owner"`):    1,
		series("meshcap_capture_connections_exempt_total", `,rule="loopback"`): 1,
		series("meshcap_capture_connections_refused_total", ""):                0,
		series("meshcap_capture_connections_capacity", ""):                     65536,
	} {
		if got, ok := m[k]; !ok || got != want {
			t.Errorf("agent /metrics %s = %v (present %v), want %v; all: %v", k, got, ok, want, m)
		}
	}

	// Restart: an established captured connection survives; new ones are captured, during and after the restart.
	step("held connection, agent stop")
	held := startHeldConn(t, podA, srvAddr)
	if held.peer == held.local {
		t.Fatalf("held connection not captured: local %s, server saw %s", held.local, held.peer)
	}
	held.exchange("before restart")
	linksBefore, progsBefore := linkIDs(t, pin)
	agent.stop(t)
	if got := cgroupPrograms(t, kubepods); got != 4 {
		t.Fatalf("agent stopped: %d programs attached, want 4 (capture stays)", got)
	}
	held.exchange("agent stopped")
	expectDial(podA, srvAddr, true, "agent stopped")
	expectDial(podB, srvAddr, false, "agent stopped, pod B")
	step("agent start again")
	agent = startAgent(t, agentArgs...)
	if !strings.Contains(agent.log.String(), "re-attached") {
		t.Errorf("restarted agent does not say it re-attached:\n%s", agent.log.String())
	}
	held.exchange("after restart")
	expectDial(podA, srvAddr, true, "after restart")
	expectDial(podB, srvAddr, false, "after restart, pod B")
	step("checks after restart, DEL")
	linksAfter, progsAfter := linkIDs(t, pin)
	if !slices.Equal(linksBefore, linksAfter) {
		t.Errorf("links replaced by the restart: %v -> %v (want the same links, updated in place)", linksBefore, linksAfter)
	}
	if slices.Equal(progsBefore, progsAfter) {
		t.Errorf("programs not reloaded by the restart (upgrade path): %v", progsAfter)
	}
	if got, err := loader.EnrolledNetns(pinDir); err != nil || !slices.Equal(got, []uint64{cookieA}) {
		t.Fatalf("after restart: enrolled netns %v (%v), want %d", got, err, cookieA)
	}

	held.close() // while pod A still has its interface, so that the server sees the connection end

	// DEL unenrolls: pod A is no longer captured, its inbound capture is gone; the chain's DEL succeeds.
	if _, err := e.cnitool("del", podA.NetnsPath, podArgs("default", "a"), nil); err != nil {
		t.Fatal(err)
	}
	if got := e.records(); len(got) != 0 {
		t.Fatalf("records after DEL: %v", got)
	}
	if got, err := loader.EnrolledNetns(pinDir); err != nil || len(got) != 0 {
		t.Fatalf("after DEL: enrolled netns %v (%v), want none", got, err)
	}
	if got := netnsSkLookupPrograms(t, podA.NetnsPath); got != 0 {
		t.Errorf("after DEL: pod A has %d sk_lookup programs", got)
	}
	// The chain's DEL also removed pod A's interface: a new sandbox in the same netns, not opted in, is not captured
	// (its cookie would still be enrolled had DEL not unenrolled it).
	e.add(podA, podArgs("default", "a"))
	expectDial(podA, srvAddr, false, "after DEL, added again without opt-in")
	if _, err := e.cnitool("del", podA.NetnsPath, podArgs("default", "a"), nil); err != nil {
		t.Fatal(err)
	}
	// Enrolled again, then uninstall removes it all.
	e.add(podA, podArgs("default", "a", "MESHCAP_ENROLL=true"))
	expectDial(podA, srvAddr, true, "enrolled again")
	agent.stop(t)
	step("uninstall")
	out, err := runMeshcap(t, append([]string{"agent", "--uninstall", "--cni-bin-dir", e.bin, "--cni-conf-dir", e.confDir}, agentArgs[2:]...)...)
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		ents, _ := os.ReadDir(pin)
		t.Errorf("pin dir %s still there after uninstall (%v): %v", pin, err, ents)
	}
	if got := cgroupPrograms(t, kubepods); got != 0 {
		t.Errorf("after uninstall: %d programs attached at the kubepods root", got)
	}
	if got := netnsSkLookupPrograms(t, podA.NetnsPath); got != 0 {
		t.Errorf("after uninstall: pod A has %d sk_lookup programs", got)
	}
	if got := e.records(); len(got) != 0 {
		t.Errorf("records after uninstall: %v", got)
	}
	if _, err := os.Stat(cni.AgentInfoPath(e.stateDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("agent.json after uninstall: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.bin, cni.PluginType)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("meshcap-cni binary after uninstall: %v", err)
	}
	if conf, _ := os.ReadFile(filepath.Join(e.confDir, "10-"+e.net+".conflist")); strings.Contains(string(conf), cni.PluginType) {
		t.Errorf("conflist still chains meshcap-cni:\n%s", conf)
	}
	expectDial(podA, srvAddr, false, "after uninstall")
	// The runtime's DEL still works with the chain as uninstall left it.
	for _, p := range []*podnet.Pod{podA, podB, srv} {
		if _, err := e.cnitool("del", p.NetnsPath, podArgs("default", "x"), nil); err != nil {
			t.Errorf("DEL after uninstall: %v", err)
		}
	}
}
