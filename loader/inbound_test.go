package loader

import (
	"github.com/meshcap/meshcap/pkg/hostfs"

	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/podnet"
)

// Real-kernel tests of the inbound sk_lookup program: a server pod (netns) with a "proxy" listener on 15006 and
// "app" listeners, a client pod linked to it by a veth, connections from the client and from inside the server pod.
// Every server writes "<tag> <local address>\n", so a test sees both who accepted and the getsockname() it saw.

const (
	inbClientIP = "198.18.0.1"
	inbServerIP = "198.18.0.2"
)

type inbEnv struct {
	server, client *podnet.Pod
	pinRoot        string
}

func inbRequireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root: creates network namespaces and attaches sk_lookup programs")
		}
		t.Skip("needs root: creates network namespaces and attaches sk_lookup programs")
	}
}

func inbSuffix(t *testing.T) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// newInbEnv makes a client and a server pod linked by a veth and a private pin root; all removed in t.Cleanup.
func newInbEnv(t *testing.T) *inbEnv {
	t.Helper()
	inbRequireRoot(t)
	sfx := inbSuffix(t)
	// A private bpffs instance: the tests neither need nor touch the shared /sys/fs/bpf.
	bpffs := t.TempDir()
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs on %s: %v", bpffs, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(bpffs, unix.MNT_DETACH) })
	e := &inbEnv{pinRoot: filepath.Join(bpffs, "meshcap")}
	var err error
	if e.server, err = podnet.NewPod("inbs-" + sfx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.server.Close() })
	if e.client, err = podnet.NewPod("inbc-" + sfx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.client.Close() })
	if err := podnet.Link(e.client, e.server, netip.MustParsePrefix(inbClientIP+"/24"), netip.MustParsePrefix(inbServerIP+"/24")); err != nil {
		t.Fatal(err)
	}
	// Runs before the pods are removed (cleanups are LIFO).
	t.Cleanup(func() {
		if _, err := os.Stat(e.server.NetnsPath); err == nil {
			if err := DetachInbound(e.server.NetnsPath, e.pinRoot); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		_ = os.RemoveAll(e.pinRoot)
	})
	return e
}

// serve listens on addr inside pod and answers every connection with "<tag> <local address>\n".
func (e *inbEnv) serve(t *testing.T, pod *podnet.Pod, addr, tag string) *net.TCPListener {
	t.Helper()
	ln, err := pod.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	return inbAnswer(t, ln, tag)
}

// inbAnswer answers every connection on ln with "<tag> <local address>\n" until the test ends.
func inbAnswer(t *testing.T, ln net.Listener, tag string) *net.TCPListener {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(tag + " " + c.LocalAddr().String() + "\n"))
			c.Close()
		}
	}()
	return ln.(*net.TCPListener)
}

// dial connects from pod (optionally from source address src) to addr and returns the server's line.
func (e *inbEnv) dial(t *testing.T, pod *podnet.Pod, src, addr string) (string, error) {
	t.Helper()
	var conn net.Conn
	err := pod.Do(func() error {
		d := net.Dialer{Timeout: 3 * time.Second}
		d.SetMultipathTCP(false)
		if src != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
		}
		var err error
		conn, err = d.DialContext(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
}

func (e *inbEnv) expect(t *testing.T, pod *podnet.Pod, src, addr, want string) {
	t.Helper()
	got, err := e.dial(t, pod, src, addr)
	if err != nil {
		t.Fatalf("dial %s from %s (src %q): %v; want %q", addr, pod.Name, src, err, want)
	}
	if got != want {
		t.Fatalf("dial %s from %s (src %q): reached %q, want %q", addr, pod.Name, src, got, want)
	}
}

func (e *inbEnv) expectRefused(t *testing.T, pod *podnet.Pod, addr string) {
	t.Helper()
	got, err := e.dial(t, pod, "", addr)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s from %s: got %q, %v; want connection refused", addr, pod.Name, got, err)
	}
}

func inbPolicy(t *testing.T, b, d string) capture.Policy {
	t.Helper()
	c := capture.Default()
	c.InboundPortsInclude, c.InboundPortsExclude = b, d
	p, err := c.Policy()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *inbEnv) status(t *testing.T) *InboundInfo {
	t.Helper()
	info, err := InboundStatus(e.server.NetnsPath, e.pinRoot)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func srv(port string) string { return net.JoinHostPort(inbServerIP, port) }

// The whole life cycle: steer, exclusions, loopback, fail-closed, re-register, re-attach, detach.
func TestInboundSteering(t *testing.T) {
	e := newInbEnv(t)
	proxy := e.serve(t, e.server, "0.0.0.0:15006", "proxy")
	for _, port := range []string{"8080", "9090", "15020", "15008"} {
		e.serve(t, e.server, "0.0.0.0:"+port, "app")
	}
	e.expect(t, e.client, "", srv("8080"), "app "+srv("8080")) // baseline: nothing attached

	// The injector's shape: -b '*' -d 15020 (tunnel 15008 and capture 15006 by default).
	info, err := AttachInbound(e.server.NetnsPath, inbPolicy(t, "*", "15020"), InboundOptions{PinRoot: e.pinRoot, Listener: proxy})
	if err != nil {
		t.Fatal(err)
	}
	if !info.Attached || !info.Listener || !info.AllPorts || info.CapturePort != 15006 || info.TunnelPort != 15008 {
		t.Fatalf("after attach: %+v", info)
	}

	t.Run("captured port lands on the proxy with the original destination", func(t *testing.T) {
		e.expect(t, e.client, "", srv("8080"), "proxy "+srv("8080"))
		e.expect(t, e.client, "", srv("9090"), "proxy "+srv("9090"))
		e.expect(t, e.client, "", srv("12345"), "proxy "+srv("12345")) // no app listening: still the proxy's call
	})
	t.Run("excluded, tunnel and capture ports are not steered", func(t *testing.T) {
		e.expect(t, e.client, "", srv("15020"), "app "+srv("15020")) // -d
		e.expect(t, e.client, "", srv("15008"), "app "+srv("15008")) // -e
		e.expect(t, e.client, "", srv("15006"), "proxy "+srv("15006"))
	})
	t.Run("loopback inside the pod is never steered", func(t *testing.T) {
		e.expect(t, e.server, "", "127.0.0.1:8080", "app 127.0.0.1:8080")
		// The sidecar's inbound passthrough: from 127.0.0.6 to the pod IP.
		e.expect(t, e.server, "127.0.0.6", srv("8080"), "app "+srv("8080"))
	})
	t.Run("pod to its own pod IP is not steered (istio: rule 11b for an app; 11a for the proxy is connect4's)", func(t *testing.T) {
		e.expect(t, e.server, "", srv("8080"), "app "+srv("8080"))
	})
	st := e.status(t).Stats
	if st.Steered < 3 || st.PassLoopback < 3 || st.PassPort < 2 || st.DropNoListener != 0 {
		t.Fatalf("counters: %+v", st)
	}

	t.Run("proxy down: captured ports are refused, others still work", func(t *testing.T) {
		proxy.Close()
		e.expectRefused(t, e.client, srv("8080"))
		e.expect(t, e.client, "", srv("15020"), "app "+srv("15020"))
		e.expect(t, e.server, "127.0.0.6", srv("8080"), "app "+srv("8080"))
		if info := e.status(t); info.Listener || info.Stats.DropNoListener == 0 {
			t.Fatalf("after proxy close: listener=%v stats=%+v", info.Listener, info.Stats)
		}
	})

	outer := t // the restarted proxy must outlive its subtest
	t.Run("restarted proxy registers itself", func(t *testing.T) {
		proxy = e.serve(outer, e.server, "0.0.0.0:15006", "proxy2")
		if err := RegisterInboundListener(e.pinRoot, proxy); err != nil {
			t.Fatal(err)
		}
		e.expect(t, e.client, "", srv("8080"), "proxy2 "+srv("8080"))
	})
	t.Run("a proxy that reads no netns cookie registers itself", func(t *testing.T) {
		// A sidecar container on Linux 5.10 without a writable cgroupfs: its netns id is the inode stand-in, and
		// the pins (named by cookie) are found through the sk_lookup link's netns inode.
		t.Setenv(ProbeDisableEnv, CheckUserspaceNetnsCookie)
		proxy.Close()
		e.expectRefused(t, e.client, srv("8080"))
		proxy = e.serve(outer, e.server, "0.0.0.0:15006", "proxy2")
		if err := RegisterInboundListener(e.pinRoot, proxy); err != nil {
			t.Fatal(err)
		}
		e.expect(t, e.client, "", srv("8080"), "proxy2 "+srv("8080"))
	})

	t.Run("re-attach with a -b list keeps the registration and swaps the policy", func(t *testing.T) {
		// -b list: only 8080 is captured; -d is ignored in list mode, as in istio.
		info, err := AttachInbound(e.server.NetnsPath, inbPolicy(t, "8080,15008", "8080"), InboundOptions{PinRoot: e.pinRoot})
		if err != nil {
			t.Fatal(err)
		}
		if !info.Listener || info.AllPorts || len(info.Ports) != 2 {
			t.Fatalf("after re-attach: %+v", info)
		}
		e.expect(t, e.client, "", srv("8080"), "proxy2 "+srv("8080"))
		e.expect(t, e.client, "", srv("9090"), "app "+srv("9090"))
		e.expect(t, e.client, "", srv("15020"), "app "+srv("15020"))
		e.expect(t, e.client, "", srv("15008"), "app "+srv("15008")) // the tunnel port beats -b
		if _, err := AttachInbound(e.server.NetnsPath, inbPolicy(t, "8080,15008", "8080"), InboundOptions{PinRoot: e.pinRoot}); err != nil {
			t.Fatalf("same attach again: %v", err)
		}
		e.expect(t, e.client, "", srv("8080"), "proxy2 "+srv("8080"))
	})

	t.Run("detach restores the direct path and is idempotent", func(t *testing.T) {
		for i := 0; i < 2; i++ {
			if err := DetachInbound(e.server.NetnsPath, e.pinRoot); err != nil {
				t.Fatalf("detach #%d: %v", i+1, err)
			}
		}
		e.expect(t, e.client, "", srv("8080"), "app "+srv("8080"))
		if _, err := InboundStatus(e.server.NetnsPath, e.pinRoot); !errors.Is(err, ErrInboundNotAttached) {
			t.Fatalf("status after detach: %v, want ErrInboundNotAttached", err)
		}
		if _, err := os.Stat(info.PinDir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("pin dir %s still there: %v", info.PinDir, err)
		}
		if err := RegisterInboundListener(e.pinRoot, proxy); !errors.Is(err, ErrInboundNotAttached) {
			t.Fatalf("register after detach: %v, want ErrInboundNotAttached", err)
		}
	})

	t.Run("attach again after detach", func(t *testing.T) {
		if _, err := AttachInbound(e.server.NetnsPath, inbPolicy(t, "*", ""), InboundOptions{PinRoot: e.pinRoot, Listener: proxy}); err != nil {
			t.Fatal(err)
		}
		e.expect(t, e.client, "", srv("9090"), "proxy2 "+srv("9090"))
	})
}

// Attach with no proxy yet (fail closed until it registers), and "find the listener" for a proxy that started first.
func TestInboundFindListener(t *testing.T) {
	e := newInbEnv(t)
	e.serve(t, e.server, "0.0.0.0:8080", "app")
	info, err := AttachInbound(e.server.NetnsPath, inbPolicy(t, "*", ""), InboundOptions{PinRoot: e.pinRoot, FindListener: true})
	if err != nil {
		t.Fatal(err)
	}
	if info.Listener {
		t.Fatal("no proxy listening, yet a listener is registered")
	}
	e.expectRefused(t, e.client, srv("8080"))

	e.serve(t, e.server, "0.0.0.0:15006", "proxy")
	// The listener is root's (this test process): not the proxy uid, so it must not be taken.
	if info, err := AttachInbound(e.server.NetnsPath, inbPolicy(t, "*", ""), InboundOptions{PinRoot: e.pinRoot, FindListener: true}); err != nil || info.Listener {
		t.Fatalf("a listener of a non-exempt owner: attach %v, registered %v", err, info != nil && info.Listener)
	}
	e.expectRefused(t, e.client, srv("8080"))
	rootExempt := inbPolicy(t, "*", "")
	rootExempt.ProxyUIDs = []uint32{1337, 0}
	if _, err := AttachInbound(e.server.NetnsPath, rootExempt, InboundOptions{PinRoot: e.pinRoot, FindListener: true}); err != nil {
		t.Fatal(err)
	}
	e.expect(t, e.client, "", srv("8080"), "proxy "+srv("8080"))
	if st := e.status(t); !st.Listener || st.ListenerCookie == 0 {
		t.Fatalf("status: %+v", st)
	}
	if _, err := FindInboundListeners(e.client.NetnsPath, 15006, rootExempt); !errors.Is(err, ErrInboundListenerNotFound) {
		t.Fatalf("find in the client pod: %v, want ErrInboundListenerNotFound", err)
	}
}

// Bad input is rejected with a reason, and leaves nothing behind.
func TestInboundRejects(t *testing.T) {
	e := newInbEnv(t)
	if _, err := AttachInbound(e.server.NetnsPath, inbPolicy(t, "", ""), InboundOptions{PinRoot: e.pinRoot}); err == nil || !strings.Contains(err.Error(), "-b is empty") {
		t.Fatalf("attach with -b empty: %v", err)
	}
	if _, err := AttachInbound("/proc/self/ns/mnt", inbPolicy(t, "*", ""), InboundOptions{PinRoot: e.pinRoot}); err == nil || !strings.Contains(err.Error(), "not a network namespace") {
		t.Fatalf("attach to a mount namespace: %v", err)
	}
	if _, err := AttachInbound(e.server.NetnsPath, inbPolicy(t, "*", ""), InboundOptions{PinRoot: "/tmp/not-bpffs"}); err == nil || !strings.Contains(err.Error(), "not on a bpf filesystem") {
		t.Fatalf("attach with pin root off bpffs: %v", err)
	}
	wrongPort := e.serve(t, e.server, "0.0.0.0:15007", "proxy")
	if _, err := AttachInbound(e.server.NetnsPath, inbPolicy(t, "*", ""), InboundOptions{PinRoot: e.pinRoot, Listener: wrongPort}); err == nil || !strings.Contains(err.Error(), "port 15007") {
		t.Fatalf("attach with a listener on the wrong port: %v", err)
	}
	if _, err := os.Stat(e.pinRoot); err == nil {
		if entries, _ := os.ReadDir(e.pinRoot); len(entries) != 0 {
			t.Fatalf("failed attaches left pins: %v", entries)
		}
	}
	if err := RegisterInboundListener(e.pinRoot, wrongPort); !errors.Is(err, ErrInboundNotAttached) {
		t.Fatalf("register with nothing attached: %v", err)
	}

	if _, err := AttachInbound(e.server.NetnsPath, inbPolicy(t, "*", ""), InboundOptions{PinRoot: e.pinRoot}); err != nil {
		t.Fatal(err)
	}
	var mptcp net.Listener
	if err := e.server.Do(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(true)
		var err error
		mptcp, err = lc.Listen(context.Background(), "tcp", "0.0.0.0:15006")
		return err
	}); err != nil {
		t.Skipf("no MPTCP listener here: %v", err)
	}
	defer mptcp.Close()
	if err := RegisterInboundListener(e.pinRoot, mptcp.(*net.TCPListener)); err == nil || !strings.Contains(err.Error(), "MPTCP") {
		t.Fatalf("register an MPTCP listener: %v", err)
	}
}

// Cross-process, as deployed: a short-lived "CLI" process attaches and exits; a separate "proxy" process listens,
// registers itself while root, drops to uid 1337 and serves; killing it makes captured ports refuse connections.
func TestInboundAcrossProcesses(t *testing.T) {
	e := newInbEnv(t)
	e.serve(t, e.server, "0.0.0.0:8080", "app")
	e.serve(t, e.server, "0.0.0.0:15020", "app")

	attach := exec.Command(os.Args[0])
	attach.Env = append(os.Environ(), inbChildEnv+"=attach", "INB_NETNS="+e.server.NetnsPath, "INB_PINROOT="+e.pinRoot)
	if out, err := attach.CombinedOutput(); err != nil {
		t.Fatalf("attach process: %v\n%s", err, out)
	}
	e.expectRefused(t, e.client, srv("8080")) // attached, no proxy yet: fail closed
	e.expect(t, e.client, "", srv("15020"), "app "+srv("15020"))

	proxy := exec.Command(os.Args[0])
	proxy.Env = append(os.Environ(), inbChildEnv+"=proxy", "INB_NETNS="+e.server.NetnsPath, "INB_PINROOT="+e.pinRoot)
	stdout, err := proxy.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	proxy.Stderr = os.Stderr
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Process.Kill(); _ = proxy.Wait() })
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- strings.TrimSpace(line)
	}()
	select {
	case line := <-ready:
		if line != "ready uid=1337" {
			t.Fatalf("proxy process: %q", line)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("proxy process did not get ready")
	}
	e.expect(t, e.client, "", srv("8080"), "child-proxy "+srv("8080"))

	_ = proxy.Process.Kill()
	_ = proxy.Wait()
	e.expectRefused(t, e.client, srv("8080"))
	e.expect(t, e.client, "", srv("15020"), "app "+srv("15020"))
}

const inbChildEnv = "MESHCAP_INBOUND_CHILD"

// inboundChildMain is the child process of TestInboundAcrossProcesses, called by TestMain when the test binary is
// re-executed with inbChildEnv set.
func inboundChildMain(mode string) {
	nsPath, pinRoot := os.Getenv("INB_NETNS"), os.Getenv("INB_PINROOT")
	switch mode {
	case "attach":
		p := capture.Default()
		p.InboundPortsInclude, p.InboundPortsExclude = "*", "15020"
		pol, err := p.Policy()
		if err == nil {
			_, err = AttachInbound(nsPath, pol, InboundOptions{PinRoot: pinRoot})
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	case "proxy":
		ns, err := os.Open(nsPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		var ln net.Listener
		err = hostfs.InNetns(ns, func() error {
			var lc net.ListenConfig
			lc.SetMultipathTCP(false)
			var err error
			ln, err = lc.Listen(context.Background(), "tcp", "0.0.0.0:15006")
			return err
		})
		if err == nil {
			err = RegisterInboundListener(pinRoot, ln.(*net.TCPListener))
		}
		if err == nil {
			// Like a real proxy: no privileges left once the listener is registered.
			if err = syscall.Setgid(1337); err == nil {
				err = syscall.Setuid(1337)
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("ready uid=%d\n", os.Getuid())
		for {
			c, err := ln.Accept()
			if err != nil {
				os.Exit(0)
			}
			_, _ = c.Write([]byte("child-proxy " + c.LocalAddr().String() + "\n"))
			c.Close()
		}
	}
	fmt.Fprintf(os.Stderr, "unknown %s mode %q\n", inbChildEnv, mode)
	os.Exit(2)
}

// Envoy listens with SO_REUSEPORT, one socket per worker. Registering one member is enough: after bpf_sk_assign
// the kernel still picks a member of the group, so every worker gets connections.
func TestInboundReuseportGroup(t *testing.T) {
	e := newInbEnv(t)
	var members []*net.TCPListener
	for i := 0; i < 2; i++ {
		var ln net.Listener
		if err := e.server.Do(func() error {
			lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				if err := rc.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
				}); err != nil {
					return err
				}
				return serr
			}}
			lc.SetMultipathTCP(false)
			var err error
			ln, err = lc.Listen(context.Background(), "tcp4", "0.0.0.0:15006")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		tag := fmt.Sprintf("worker%d", i)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = c.Write([]byte(tag + " " + c.LocalAddr().String() + "\n"))
				c.Close()
			}
		}()
		members = append(members, ln.(*net.TCPListener))
	}
	if _, err := AttachInbound(e.server.NetnsPath, inbPolicy(t, "*", ""), InboundOptions{PinRoot: e.pinRoot, Listener: members[0]}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for i := 0; i < 64 && len(seen) < 2; i++ {
		got, err := e.dial(t, e.client, "", srv("8080"))
		if err != nil {
			t.Fatal(err)
		}
		tag, addr, _ := strings.Cut(got, " ")
		if addr != srv("8080") {
			t.Fatalf("reached %q, want original destination %s", got, srv("8080"))
		}
		seen[tag]++
	}
	if len(seen) != 2 {
		t.Fatalf("connections went only to %v; want both reuseport members", seen)
	}
}

// A deleted pod netns takes its link with it; PruneInbound then removes the pins left behind, and only those.
func TestInboundPrune(t *testing.T) {
	e := newInbEnv(t)
	if _, err := AttachInbound(e.client.NetnsPath, inbPolicy(t, "*", ""), InboundOptions{PinRoot: e.pinRoot}); err != nil {
		t.Fatal(err)
	}
	gone, err := AttachInbound(e.server.NetnsPath, inbPolicy(t, "*", ""), InboundOptions{PinRoot: e.pinRoot})
	if err != nil {
		t.Fatal(err)
	}
	if pruned, err := PruneInbound(e.pinRoot); err != nil || len(pruned) != 0 {
		t.Fatalf("prune with both pods alive: %v, %v", pruned, err)
	}
	if err := e.server.Close(); err != nil {
		t.Fatal(err)
	}
	// The kernel destroys a netns asynchronously.
	deadline := time.Now().Add(10 * time.Second)
	for {
		pruned, err := PruneInbound(e.pinRoot)
		if err != nil {
			t.Fatal(err)
		}
		if len(pruned) == 1 && pruned[0] == gone.NetnsCookie {
			break
		}
		if len(pruned) != 0 || time.Now().After(deadline) {
			t.Fatalf("pruned %v, want [%d]", pruned, gone.NetnsCookie)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := os.Stat(gone.PinDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s still there: %v", gone.PinDir, err)
	}
	if _, err := InboundStatus(e.client.NetnsPath, e.pinRoot); err != nil {
		t.Fatalf("the live pod's attachment: %v", err)
	}
	if err := DetachInbound(e.client.NetnsPath, e.pinRoot); err != nil {
		t.Fatal(err)
	}
}
