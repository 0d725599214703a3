package test

// End-to-end tests of `meshcap proxy` behind a real iptables REDIRECT (kernel SO_ORIGINAL_DST), in pods made by
// the harness. The eBPF-mode equivalents use the same binary and flags (see test/ebpf_*_test.go).

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshcap/meshcap/pkg/podnet"
	"github.com/meshcap/meshcap/proxy"
)

var pxUID1337 = &podnet.Cred{UID: 1337, GID: 1337}

// pxIptables runs iptables-nft with args inside pod.
func pxIptables(t *testing.T, pod *podnet.Pod, args ...string) {
	t.Helper()
	if out, err := runIn(t, pod, nil, "iptables-nft", args...); err != nil {
		t.Fatalf("iptables-nft %s: %v %s", strings.Join(args, " "), err, out)
	}
}

// pxRedirectOutbound sends the client pod's TCP to 198.18.0.0/15 to 15001, except uid 1337's (istio's owner rule).
func pxRedirectOutbound(t *testing.T, pod *podnet.Pod) {
	pxIptables(t, pod, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "198.18.0.0/15",
		"-m", "owner", "!", "--uid-owner", "1337", "-j", "REDIRECT", "--to-ports", "15001")
}

// pxStats reads the proxy's stats file.
func pxStats(t *testing.T, p *proc) proxy.Snapshot {
	t.Helper()
	b, err := os.ReadFile(p.statsFile)
	if err != nil {
		t.Fatal(err)
	}
	var s proxy.Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("stats file %s: %v: %s", p.statsFile, err, b)
	}
	return s
}

// pxWaitStats polls the stats file (rewritten at most every 200 ms) until cond holds.
func pxWaitStats(t *testing.T, p *proc, what string, cond func(proxy.Snapshot) bool) proxy.Snapshot {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := pxStats(t, p)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats never showed %s: %+v", what, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pxStatusLine returns the value of a /proc/PID/status field.
func pxStatusLine(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return ""
}

// TestProxyIptablesOutbound: with a real REDIRECT, the proxy (dropped to uid 1337) relays every connection to
// the exact original destination (address and port), 32 MiB intact, and skips uid 1337's own connections.
func TestProxyIptablesOutbound(t *testing.T) {
	requireRoot(t)
	topo := newTopology(t)
	pxRedirectOutbound(t, topo.client)
	p := startProxy(t, topo.client, "--no-inbound", "--log-connections")

	// Privileges: the proxy process itself is now uid/gid 1337 with no supplementary groups.
	pid := p.cmd.Process.Pid
	deadline := time.Now().Add(5 * time.Second)
	for pxStatusLine(t, pid, "Uid") != "1337 1337 1337 1337" && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if uid, gid, groups := pxStatusLine(t, pid, "Uid"), pxStatusLine(t, pid, "Gid"), pxStatusLine(t, pid, "Groups"); uid != "1337 1337 1337 1337" || gid != "1337 1337 1337 1337" || groups != "" {
		t.Fatalf("proxy pid %d: Uid %q Gid %q Groups %q, want 1337 x4, 1337 x4, none", pid, uid, gid, groups)
	}

	var want int64
	for _, tc := range []struct {
		addr    string
		payload int64
	}{{"198.18.0.2:8080", 32 << 20}, {"198.18.0.2:9090", 1000}, {"198.18.1.2:7070", 1}} {
		res, err := dial(t, topo.client, nil, tc.addr, tc.payload)
		if err != nil {
			t.Fatalf("dial %s: %v", tc.addr, err)
		}
		if !res.OK || res.Reached != tc.addr || !res.Captured() || res.Echoed != tc.payload {
			t.Fatalf("dial %s through the proxy: %+v", tc.addr, res)
		}
		if !strings.HasPrefix(res.Peer, "198.18.0.1:") {
			t.Fatalf("dial %s: server saw peer %s, want the client pod's address", tc.addr, res.Peer)
		}
		want += tc.payload
	}
	// uid 1337 is exempt: not redirected, so the server sees the client's own socket.
	res, err := dial(t, topo.client, pxUID1337, "198.18.0.2:8080", 10)
	if err != nil || !res.OK || res.Captured() {
		t.Fatalf("uid 1337 dial: %+v, %v", res, err)
	}

	s := pxWaitStats(t, p, "3 relayed connections, closed", func(s proxy.Snapshot) bool {
		return s.Outbound.Relayed == 3 && s.Outbound.Active == 0 && s.Outbound.BytesDown >= uint64(want)
	})
	// Bytes down include each server's greeting line.
	if s.Outbound.Accepted != 3 || s.Outbound.BytesUp != uint64(want) || s.Errors != (proxy.ErrorSnapshot{}) || s.Inbound != (proxy.ListenerSnapshot{}) {
		t.Fatalf("stats %+v", s)
	}

	// Graceful stop: SIGTERM -> exit 0, final counters written, summary logged.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("proxy did not stop on SIGTERM")
	}
	if p.err != nil {
		t.Fatalf("proxy exit: %v\n%s", p.err, p.stderr.String())
	}
	for _, s := range []string{"proxy stopped", "original_dst", "198.18.1.2:7070"} {
		if !strings.Contains(p.stderr.String()+p.stdout.String(), s) {
			t.Errorf("proxy log lacks %q:\n%s", s, p.stderr.String())
		}
	}
}

// TestProxyIptablesHalfClose: the client shuts its write side, the server answers only after EOF, and the
// answer still reaches the client through the proxy (both copy modes).
func TestProxyIptablesHalfClose(t *testing.T) {
	requireRoot(t)
	for _, mode := range []string{"splice", "buffer"} {
		t.Run(mode, func(t *testing.T) {
			client, server := newPod(t, "cli"), newPod(t, "srv")
			linkPods(t, client, server)
			ln, err := server.Listen("198.18.0.2:6060")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				h := sha256.New()
				n, _ := io.Copy(h, c) // until the client's FIN
				fmt.Fprintf(c, "%s %d %x\n", c.RemoteAddr(), n, h.Sum(nil))
			}()
			pxRedirectOutbound(t, client)
			startProxy(t, client, "--no-inbound", "--copy", mode)

			payload := make([]byte, 4<<20)
			rand.Read(payload)
			var c *net.TCPConn
			if err := client.Do(func() error { // root: captured
				nc, err := net.DialTimeout("tcp4", "198.18.0.2:6060", 5*time.Second)
				if err == nil {
					c = nc.(*net.TCPConn)
				}
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			if _, err := c.Write(payload); err != nil {
				t.Fatal(err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				t.Fatalf("no response after half-close: %v", err)
			}
			f := strings.Fields(line)
			if len(f) != 3 || f[1] != fmt.Sprint(len(payload)) || f[2] != fmt.Sprintf("%x", sha256.Sum256(payload)) {
				t.Fatalf("response %q", line)
			}
			if f[0] == c.LocalAddr().String() {
				t.Fatalf("server saw the client socket %s: not relayed", f[0])
			}
		})
	}
}

// TestProxyIptablesErrors: a connection to the proxy's own listener (no NAT: SO_ORIGINAL_DST is the listener
// itself) is refused by the loop guard; a redirected connection to a closed port is closed (dial error); the
// proxy keeps serving afterwards.
func TestProxyIptablesErrors(t *testing.T) {
	requireRoot(t)
	topo := newTopology(t)
	pxRedirectOutbound(t, topo.client)
	p := startProxy(t, topo.client, "--no-inbound", "--dial-timeout", "2s")

	if err := topo.client.Do(func() error {
		c, err := net.DialTimeout("tcp4", "127.0.0.1:15001", 5*time.Second)
		if err != nil {
			return nil // reset before connect() returned: refused as well
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
			return fmt.Errorf("direct connection to the proxy not closed: read %d, %v", n, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	pxWaitStats(t, p, "a loop error", func(s proxy.Snapshot) bool { return s.Errors.Loop == 1 })

	start := time.Now()
	res, err := dial(t, topo.client, nil, "198.18.0.2:1", 10)
	if err == nil || res.OK {
		t.Fatalf("dial to a closed port through the proxy succeeded: %+v", res)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("client closed only after %s", d)
	}
	pxWaitStats(t, p, "a dial error", func(s proxy.Snapshot) bool { return s.Errors.Dial == 1 })

	res, err = dial(t, topo.client, nil, "198.18.0.2:8080", 1000)
	if err != nil || !res.OK || !res.Captured() || res.Reached != "198.18.0.2:8080" {
		t.Fatalf("dial after errors: %+v, %v", res, err)
	}
	s := pxWaitStats(t, p, "1 relayed", func(s proxy.Snapshot) bool { return s.Outbound.Relayed == 1 })
	if s.Errors.OrigDst != 0 || s.Errors.Relay != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestProxyIptablesInbound: PREROUTING REDIRECT to 15006 in the server pod; the proxy relays to the pod's own
// address and original port, from 127.0.0.6.
func TestProxyIptablesInbound(t *testing.T) {
	requireRoot(t)
	topo := newTopology(t)
	pxIptables(t, topo.server, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-d", "198.18.0.0/15",
		"-j", "REDIRECT", "--to-ports", "15006")
	pxCheckInbound(t, topo)
}

// pxCheckInbound starts the proxy in the server pod (its inbound rules already in place), dials two server
// addresses from the client pod, and checks that both were relayed to their original destination from 127.0.0.6.
func pxCheckInbound(t *testing.T, topo topology) {
	t.Helper()
	p := startProxy(t, topo.server)
	waitListening(t, topo.server, 15006)
	for _, addr := range []string{"198.18.0.2:8080", "198.18.1.2:9090"} {
		res, err := dial(t, topo.client, nil, addr, 1<<20)
		if err != nil || !res.OK || res.Reached != addr || !strings.HasPrefix(res.Peer, "127.0.0.6:") {
			t.Fatalf("inbound dial %s: %+v, %v", addr, res, err)
		}
	}
	s := pxWaitStats(t, p, "2 inbound relayed", func(s proxy.Snapshot) bool {
		return s.Inbound.Relayed == 2 && s.Inbound.Active == 0
	})
	if s.Inbound.BytesUp != 2<<20 || s.Outbound.Accepted != 0 || s.Errors != (proxy.ErrorSnapshot{}) {
		t.Fatalf("stats %+v", s)
	}
}

// TestProxyCLIErrors: bad flag values are rejected with the value named and a non-zero exit; uid 0 after the
// drop is refused.
func TestProxyCLIErrors(t *testing.T) {
	requireRoot(t)
	pod := newPod(t, "pxcli")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--copy", "zerocopy"}, `"zerocopy"`},
		{[]string{"-p", "70000"}, `"70000"`},
		{[]string{"-z", "0"}, `"0"`},
		{[]string{"--outbound-addr", "localhost:15001"}, `"localhost:15001"`},
		{[]string{"--inbound-source", "::6"}, `"::6"`},
		{[]string{"--admin-addr", "15000"}, `"15000"`},
		{[]string{"--dial-timeout", "soon"}, `"soon"`},
		{[]string{"--uid", "-5"}, "-5"},
		{[]string{"--uid", "0", "--gid", "0"}, "refusing to run as uid 0"},
		{[]string{"--outbound-addr", "127.0.0.1:15001", "--inbound-addr", "127.0.0.1:15001"}, `"127.0.0.1:15001"`},
	} {
		out, err := runIn(t, pod, nil, meshcapBin, append([]string{"proxy"}, tc.args...)...)
		if err == nil {
			t.Errorf("proxy %v: succeeded: %s", tc.args, out)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("proxy %v: error %v does not name %s", tc.args, err, tc.want)
		}
	}
}

// TestProxyIptablesSelfCaptureLoop: a proxy kept as root (--no-drop-privileges) is captured by its own rule;
// the loop guard recognises its own upstream socket as the peer and closes the chain instead of looping.
func TestProxyIptablesSelfCaptureLoop(t *testing.T) {
	requireRoot(t)
	topo := newTopology(t)
	pxRedirectOutbound(t, topo.client)
	p := startProxy(t, topo.client, "--no-inbound", "--no-drop-privileges")
	res, err := dial(t, topo.client, pxUID1337, "198.18.0.2:8080", 10) // uid 1337: not captured, still works
	if err != nil || !res.OK || res.Captured() {
		t.Fatalf("uid 1337 dial: %+v, %v", res, err)
	}
	start := time.Now()
	res, err = dial(t, topo.client, nil, "198.18.0.2:8080", 10)
	if err == nil || res.OK {
		t.Fatalf("captured proxy relayed to itself successfully?: %+v", res)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("loop broken only after %s", d)
	}
	s := pxWaitStats(t, p, "a loop error and nothing active", func(s proxy.Snapshot) bool {
		return s.Errors.Loop >= 1 && s.Outbound.Active == 0
	})
	if s.Outbound.Accepted > 4 {
		t.Fatalf("loop ran %d connections deep: %+v", s.Outbound.Accepted, s)
	}
	if !strings.Contains(p.stderr.String(), "running as root") {
		t.Errorf("no warning about running as root:\n%s", p.stderr.String())
	}
}

// TestProxyIptablesIPv6: an IPv6 listener gets the original destination from IP6T_SO_ORIGINAL_DST
// (ip6tables REDIRECT of [::1]:8080 inside the pod).
func TestProxyIptablesIPv6(t *testing.T) {
	requireRoot(t)
	pod := newPod(t, "px6")
	startEcho(t, pod, "[::1]:8080")
	if out, err := runIn(t, pod, nil, "ip6tables-nft", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "::1", "--dport", "8080",
		"-m", "owner", "!", "--uid-owner", "1337", "-j", "REDIRECT", "--to-ports", "15001"); err != nil {
		t.Fatalf("ip6tables-nft: %v %s", err, out)
	}
	p := startIn(t, pod, nil, meshcapBin, "proxy", "--outbound-addr", "[::1]:15001", "--no-inbound")
	waitListening(t, pod, 15001)
	var local, greeting string
	if err := pod.Do(func() error {
		c, err := net.DialTimeout("tcp6", "[::1]:8080", 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		local = c.LocalAddr().String()
		greeting, err = bufio.NewReader(c).ReadString('\n')
		return err
	}); err != nil {
		t.Fatalf("dial: %v\n%s", err, p.stderr.String())
	}
	f := strings.Fields(greeting)
	if len(f) != 2 || f[0] != "[::1]:8080" || f[1] == local {
		t.Fatalf("greeting %q (client %s): not relayed to [::1]:8080", greeting, local)
	}
}
