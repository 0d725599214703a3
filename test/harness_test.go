package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// Binaries built once by TestMain into a world-readable directory (a child that drops to uid 1337 must exec them).
var meshcapBin, nettoolBin string

func TestMain(m *testing.M) {
	if spec := os.Getenv(ebChildEnv); spec != "" {
		ebpfChildDialerMain(spec) // a child re-executed inside a pod; exits
	}
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "meshcap-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: chmod:", err)
		return 1
	}
	meshcapBin, nettoolBin = filepath.Join(dir, "meshcap"), filepath.Join(dir, "nettool")
	for bin, pkg := range map[string]string{meshcapBin: "./cmd/meshcap", nettoolBin: "./test/nettool"} {
		if err := buildBin(bin, pkg); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
	}
	return m.Run()
}

// prebuiltDirEnv names a directory of prebuilt binaries (meshcap, nettool, meshcap-cni, the reference CNI plugins
// and cnitool) that the tests use instead of building them: the kernel matrix runs this package's test binary in a
// VM that has no Go toolchain.
const prebuiltDirEnv = "MESHCAP_E2E_BIN_DIR"

// buildBin puts the binary of pkg (a path relative to the module root) at bin: a copy of the prebuilt one when
// prebuiltDirEnv is set, else `go build`.
func buildBin(bin, pkg string) error {
	if dir := os.Getenv(prebuiltDirEnv); dir != "" {
		src := filepath.Join(dir, filepath.Base(pkg))
		data, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("prebuilt %s (%s=%s): %w", pkg, prebuiltDirEnv, dir, err)
		}
		return os.WriteFile(bin, data, 0o755)
	}
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
	}
	return nil
}

// requireRoot skips a privileged test outside CI and fails it in CI, where a skip would hide a missing check.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root (netns, cgroups, BPF), and CI runs as root: refusing to skip")
	}
	t.Skip("needs root: creates network namespaces and cgroups and loads BPF programs")
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newPod makes a pod with a unique name ("mc<6 hex>-<role>") that is removed when the test ends.
func newPod(t *testing.T, role string) *podnet.Pod {
	t.Helper()
	p, err := podnet.NewPod(fmt.Sprintf("mc%s-%s", randHex(3), role))
	if err != nil {
		t.Fatalf("new pod: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("remove pod %s: %v", p.Name, err)
		}
	})
	return p
}

// Addresses of the default two-pod topology; serverAlt* are extra server addresses for CIDR cases.
var (
	clientIP    = netip.MustParsePrefix("198.18.0.1/24")
	serverIP    = netip.MustParsePrefix("198.18.0.2/24")
	serverAlt1  = netip.MustParsePrefix("198.18.1.2/32")
	serverAlt2  = netip.MustParsePrefix("198.18.2.2/32")
	serverPorts = []int{8080, 9090, 7070}
)

// linkPods joins client and server with a veth pair (client 198.18.0.1, server 198.18.0.2).
func linkPods(t *testing.T, client, server *podnet.Pod) {
	t.Helper()
	if err := podnet.Link(client, server, clientIP, serverIP); err != nil {
		t.Fatalf("link pods: %v", err)
	}
}

// topology is a client pod and a server pod with echo servers on every server address and port.
type topology struct {
	client, server *podnet.Pod
}

// newTopology builds the client and server pods, adds the alternate server addresses, and starts echo servers
// on 0.0.0.0:{8080,9090,7070} in the server pod.
func newTopology(t *testing.T) topology {
	t.Helper()
	client, server := newPod(t, "cli"), newPod(t, "srv")
	linkPods(t, client, server)
	for _, a := range []netip.Prefix{serverAlt1, serverAlt2} {
		if err := server.AddAddr(a); err != nil {
			t.Fatal(err)
		}
	}
	for _, port := range serverPorts {
		startEcho(t, server, fmt.Sprintf("0.0.0.0:%d", port))
	}
	return topology{client: client, server: server}
}

// startEcho serves "<local addr> <peer addr>\n" then an echo until EOF, from a listener inside pod's netns.
func startEcho(t *testing.T, pod *podnet.Pod, addr string) net.Listener {
	t.Helper()
	ln, err := pod.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	serveConns(t, ln, func(c net.Conn) {
		fmt.Fprintf(c, "%s %s\n", c.LocalAddr(), c.RemoteAddr())
		_, _ = io.Copy(c, c)
	})
	return ln
}

// serveConns accepts on ln until the test ends and runs handle for each connection on its own goroutine (the
// connection is closed after it). Cleanup closes ln and waits for every handler.
func serveConns(t *testing.T, ln net.Listener, handle func(net.Conn)) {
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// syncBuffer is a bytes.Buffer safe for a child's output and a reading test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// proc is a background process started in a pod.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
	done           chan struct{}
	err            error
	statsFile      string // meshcap proxy only: its --stats-file
}

// stop kills the process (by its pid, which this test started) and waits for it. Idempotent.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// waitStderr waits up to 10 s (the kernel matrix's emulated VMs are slow) for text in the process's stderr (a line
// logged after its listener opened, for example) and reports whether it came.
func (p *proc) waitStderr(text string) bool {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if strings.Contains(p.stderr.String(), text) {
			return true
		}
	}
	return strings.Contains(p.stderr.String(), text)
}

// startIn starts bin in pod (its netns and cgroup, as cred when given); it is killed when the test ends.
func startIn(t *testing.T, pod *podnet.Pod, cred *podnet.Cred, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := pod.Start(p.cmd, cred); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("%s %v stderr:\n%s", filepath.Base(bin), args, p.stderr.String())
		}
	})
	return p
}

// runIn runs bin in pod to completion (30 s at most) and returns its stdout; err carries stderr.
func runIn(t *testing.T, pod *podnet.Pod, cred *podnet.Cred, bin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := pod.Start(cmd, cred); err != nil {
		return "", err
	}
	if err := cmd.Wait(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", filepath.Base(bin), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// runMeshcap runs the meshcap binary on the host (root netns and cgroup), as the CLI user would.
func runMeshcap(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, meshcapBin, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("meshcap %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// DialResult mirrors nettool's JSON output.
type DialResult struct {
	Reached, Peer, Local, Remote string
	Sent, Echoed                 int64
	OK                           bool
	Error                        string
}

// Captured reports whether the connection went through a proxy: the server saw a different client address than
// the one the client connected from (a relayed connection comes from the proxy's own socket).
func (r DialResult) Captured() bool { return r.OK && unmapped(r.Peer) != unmapped(r.Local) }

// unmapped writes an IPv4-mapped address as IPv4 (an AF_INET6 client of an IPv4 server sees itself as ::ffff:a.b.c.d).
func unmapped(addr string) string {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return addr
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
}

// dial runs `nettool dial` inside pod as cred (nil = root) and sends payload bytes through the connection; extra
// are more nettool dial flags.
func dial(t *testing.T, pod *podnet.Pod, cred *podnet.Cred, addr string, payload int64, extra ...string) (DialResult, error) {
	t.Helper()
	var res DialResult
	err := runNettool(t, pod, cred, &res, append([]string{"dial", addr, "-send", strconv.FormatInt(payload, 10), "-timeout", "10s"}, extra...)...)
	return res, err
}

// runNettool runs nettool with args inside pod as cred and decodes its one-line JSON output into res.
func runNettool(t *testing.T, pod *podnet.Pod, cred *podnet.Cred, res any, args ...string) error {
	t.Helper()
	out, err := runIn(t, pod, cred, nettoolBin, args...)
	if jerr := json.Unmarshal([]byte(out), res); jerr != nil && err == nil {
		err = fmt.Errorf("decode nettool output %q: %w", out, jerr)
	}
	return err
}

// waitListening waits until something listens on TCP port inside pod's netns.
func waitListening(t *testing.T, pod *podnet.Pod, port int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pod.WaitListening(ctx, port); err != nil {
		t.Fatal(err)
	}
}

// startProxy runs `meshcap proxy` in pod as a sidecar would: started as root, it drops to uid/gid 1337 itself.
func startProxy(t *testing.T, pod *podnet.Pod, args ...string) *proc {
	t.Helper()
	stats := filepath.Join(worldDir(t), "stats.json")
	p := startIn(t, pod, nil, meshcapBin, append([]string{"proxy", "--stats-file", stats}, args...)...)
	p.statsFile = stats
	waitListening(t, pod, 15001)
	if slices.Contains(args, "--pin-dir") {
		// Registration with eBPF inbound capture comes after the listeners open; until then captured inbound
		// connections are refused (fail closed), so wait for the proxy's line about it.
		if !p.waitStderr("inbound listener") {
			t.Fatalf("meshcap proxy said nothing about its inbound listener registration:\n%s", p.stderr.String())
		}
	}
	return p
}

// worldDir is a temp dir that a process running as uid 1337 can write to; removed when the test ends.
func worldDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "meshcap-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return dir
}

// ebPinRoot mounts a private bpffs instance for the test (the host's /sys/fs/bpf may not be bpffs, and the test
// must not touch shared pins) and returns a pin root inside it. In Cleanup everything pinned there is detached
// through the CLI, then the instance is unmounted.
func ebPinRoot(t *testing.T) string {
	t.Helper()
	mnt, err := os.MkdirTemp("", "meshcap-e2e-bpffs-")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(mnt)
		t.Fatalf("mount bpffs at %s: %v", mnt, err)
	}
	root := filepath.Join(mnt, "meshcap")
	t.Cleanup(func() {
		if out, err := runMeshcap(t, "ebpf", "detach", "--pin-dir", root); err != nil {
			t.Errorf("detach all: %v\n%s", err, out)
		}
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
		os.Remove(mnt)
	})
	return root
}

// dialAllCaptured dials every server address and port of the default topology `copies` times at once from pod as
// cred, sending payload bytes each, and fails the test unless every connection went through the proxy, reached its
// exact original destination and saw that destination as its peer. It returns the number of connections.
func dialAllCaptured(t *testing.T, pod *podnet.Pod, cred *podnet.Cred, copies int, payload int64) int {
	t.Helper()
	var dests []string
	for _, ip := range []string{"198.18.0.2", "198.18.1.2", "198.18.2.2"} {
		for _, port := range serverPorts {
			for i := 0; i < copies; i++ {
				dests = append(dests, fmt.Sprintf("%s:%d", ip, port))
			}
		}
	}
	var wg sync.WaitGroup
	results := make([]DialResult, len(dests))
	errs := make([]error, len(dests))
	for i, d := range dests {
		wg.Add(1)
		go func() { defer wg.Done(); results[i], errs[i] = dial(t, pod, cred, d, payload) }()
	}
	wg.Wait()
	for i, d := range dests {
		if r := results[i]; errs[i] != nil || !r.OK || !r.Captured() || r.Reached != d || r.Remote != d {
			t.Errorf("concurrent dial %s: %+v %v", d, r, errs[i])
		}
	}
	return len(dests)
}
