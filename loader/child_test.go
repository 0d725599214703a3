package loader

// A helper child process for the loader tests: the test binary re-executed inside a test cgroup (CLONE_INTO_CGROUP)
// and a fresh network namespace with only lo, where it plays both the client and the proxy. In a netns without
// routes an uncaptured connect to a non-loopback address fails at once (ENETUNREACH) and no packet leaves the host,
// while a captured one lands on the child's own listener on 127.0.0.1:<proxy port>.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const childEnv = "MESHCAP_LOADER_CHILD"

type childArgs struct {
	ProxyPort  uint16
	Dests      []string // dialled once each, concurrently
	Sequential string   // dialled Count times, one after the other
	Count      int
	UID, GID   int    // drop to these ids before dialling (-1: stay root)
	HoldMillis int    // keep the process (and netns) alive this long after dialling
	PinRoot    string // when set, the proxy also asks OrigDst() through the pinned map
	EarlyClose bool   // clients connect and close at once; the proxy accepts only afterwards
	WaitStdin  bool   // print "cookie=<netns cookie>" and wait for a line on stdin before dialling
	// ListenFirst (with WaitStdin): open the proxy's listeners before printing the cookie and waiting, so that a
	// test can attach capture after the sidecar listens (istio-init's order is the other way round).
	ListenFirst bool
	NoProxy     bool     // no listener on the proxy port (the sidecar stopped)
	HoldOpen    []string // dialled first, one after the other, and kept open until the child exits
	Listen6     bool     // the proxy also listens on [::1]:ProxyPort (native IPv6 capture)
	DNSPort     uint16   // a UDP DNS echo on 127.0.0.1 and [::1] at this port (the sidecar's 15053; dns_test.go)
	DNS         []string // sent one UDP datagram each, after the drop of privileges (dns_test.go)
}

type childResult struct {
	Dest     string
	Captured bool   // the proxy accepted it
	OrigDst  string // SO_ORIGINAL_DST on the proxy's accepted socket
	MapDst   string // OrigDst() through the pinned map (when PinRoot is set)
	Peer     string // getpeername() on the client socket
	ProxyKey [2]string
	Err      string
}

type childOutput struct {
	NetnsCookie uint64
	Results     []childResult
	SeqOK       int
	LateOrig    []string // EarlyClose: SO_ORIGINAL_DST of each late-accepted connection
	DNS         []childDNS
	Err         string
}

// outboundChildMain is the child's entry point, called by TestMain when the test binary is re-executed with
// childEnv set.
func outboundChildMain() {
	out := runChild()
	_ = json.NewEncoder(os.Stdout).Encode(out)
	os.Exit(0)
}

func runChild() (out childOutput) {
	var a childArgs
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &a); err != nil {
		out.Err = err.Error()
		return
	}
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		out.Err = "lo up: " + err.Error()
		return
	}
	out.NetnsCookie, _ = OwnNetnsCookie()
	if a.WaitStdin && !a.ListenFirst {
		waitParent(out.NetnsCookie)
	}
	port := a.ProxyPort
	if a.NoProxy {
		port = 0 // a listener nobody is sent to: the proxy port has none
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		out.Err = "listen: " + err.Error()
		return
	}
	defer ln.Close()
	if a.EarlyClose {
		return earlyClose(a, ln, out)
	}
	go serveProxy(ln, a, out.NetnsCookie)
	if a.Listen6 {
		ln6, err := lc.Listen(context.Background(), "tcp6", fmt.Sprintf("[::1]:%d", port))
		if err != nil {
			out.Err = "listen6: " + err.Error()
			return
		}
		defer ln6.Close()
		go serveProxy(ln6, a, out.NetnsCookie)
	}
	if a.DNSPort != 0 {
		stop, err := startDNSEcho(a.DNSPort)
		if err != nil {
			out.Err = "dns echo: " + err.Error()
			return
		}
		defer stop()
	}
	if a.WaitStdin && a.ListenFirst {
		waitParent(out.NetnsCookie)
	}
	if a.GID >= 0 {
		if err := syscall.Setgid(a.GID); err != nil {
			out.Err = err.Error()
			return
		}
	}
	if a.UID >= 0 {
		if err := syscall.Setuid(a.UID); err != nil {
			out.Err = err.Error()
			return
		}
	}
	for _, d := range a.HoldOpen {
		c, err := dialConn(d)
		if err != nil {
			out.Err = "hold " + d + ": " + err.Error()
			return
		}
		defer c.Close()
	}
	res := make(chan childResult, len(a.Dests))
	for _, d := range a.Dests {
		go func() { res <- dialOnce(d) }()
	}
	for range a.Dests {
		out.Results = append(out.Results, <-res)
	}
	for _, d := range a.DNS {
		out.DNS = append(out.DNS, dnsOnce(d))
	}
	for i := 0; i < a.Count; i++ {
		if r := dialOnce(a.Sequential); r.Captured && r.Err == "" {
			out.SeqOK++
		}
	}
	time.Sleep(time.Duration(a.HoldMillis) * time.Millisecond)
	return out
}

// waitParent tells the parent the netns cookie and waits for its go-ahead (a line on stdin).
func waitParent(cookie uint64) {
	fmt.Printf("cookie=%d\n", cookie)
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
}

// serveProxy is the proxy: it answers each accepted connection with "<SO_ORIGINAL_DST> <local> <remote> <OrigDst()>".
func serveProxy(ln net.Listener, a childArgs, cookie uint64) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func(c net.Conn) {
			defer c.Close()
			od, err := origDst(c.(*net.TCPConn))
			line := od.String()
			if err != nil {
				line = "error:" + err.Error()
			}
			mapDst := "-"
			if a.PinRoot != "" {
				l := c.LocalAddr().(*net.TCPAddr).AddrPort()
				r := c.RemoteAddr().(*net.TCPAddr).AddrPort()
				if md, err := OrigDst(a.PinRoot, l, r, cookie); err == nil {
					mapDst = md.String()
				} else {
					mapDst = "error"
				}
			}
			fmt.Fprintf(c, "%s %s %s %s\n", line, c.LocalAddr(), c.RemoteAddr(), mapDst)
		}(c)
	}
}

func dialOnce(dest string) (r childResult) {
	r.Dest = dest
	if udp, ok := strings.CutPrefix(dest, "udp:"); ok {
		// In a netns without routes a UDP connect only succeeds if it was rewritten to 127.0.0.1.
		c, err := net.Dial("udp4", udp)
		if err != nil {
			r.Err = err.Error()
			return
		}
		r.Captured, r.Peer = true, c.RemoteAddr().String()
		c.Close()
		return
	}
	c, err := dialConn(dest)
	if err != nil {
		r.Err = err.Error()
		return
	}
	defer c.Close()
	raw, _ := c.(*net.TCPConn).SyscallConn()
	_ = raw.Control(func(fd uintptr) {
		switch sa, _ := unix.Getpeername(int(fd)); sa := sa.(type) {
		case *unix.SockaddrInet4:
			r.Peer = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
		case *unix.SockaddrInet6:
			r.Peer = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
		}
	})
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		r.Err = "read: " + err.Error()
		return
	}
	r.Captured = true
	var od, l, rem, md string
	fmt.Sscanf(string(buf[:n]), "%s %s %s %s", &od, &l, &rem, &md)
	r.OrigDst, r.ProxyKey, r.MapDst = od, [2]string{l, rem}, md
	return
}

// dialConn connects to dest; "mapped:A:P" connects an AF_INET6 socket to ::ffff:A:P with the plain socket API, as
// Java does (Go itself would use an AF_INET socket for a mapped address).
func dialConn(dest string) (net.Conn, error) {
	m, ok := strings.CutPrefix(dest, "mapped:")
	if !ok {
		d := net.Dialer{Timeout: 2 * time.Second}
		d.SetMultipathTCP(false)
		if strings.HasPrefix(dest, "[") {
			return d.Dial("tcp6", dest)
		}
		return d.Dial("tcp4", dest)
	}
	ap, err := netip.ParseAddrPort(m)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "mapped")
	defer f.Close()
	if err := unix.Connect(fd, &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}); err != nil {
		return nil, fmt.Errorf("connect %s: %w", dest, err)
	}
	return net.FileConn(f)
}

// origDst asks SO_ORIGINAL_DST with the plain socket API, as any transparent proxy does: SOL_IP for an IPv4
// socket (a sockaddr_in), SOL_IPV6/IP6T_SO_ORIGINAL_DST for an IPv6 one (a sockaddr_in6).
func origDst(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	v6 := !c.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().Is4()
	level := unix.SOL_IP
	var sa [28]byte
	l := uint32(16)
	if v6 {
		level, l = unix.SOL_IPV6, 28
	}
	var serr error
	_ = raw.Control(func(fd uintptr) {
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), 80, uintptr(unsafe.Pointer(&sa[0])), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			serr = e
		}
	})
	if serr != nil {
		return netip.AddrPort{}, serr
	}
	port := uint16(sa[2])<<8 | uint16(sa[3])
	if v6 {
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(sa[8:24])), port), nil
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(sa[4:8])), port), nil
}

// outRunChildWithCookie starts the helper with WaitStdin, calls setup with its netns cookie, then lets it dial.
func outRunChildWithCookie(t *testing.T, cgroupDir string, a childArgs, setup func(cookie uint64)) childOutput {
	t.Helper()
	a.WaitStdin = true
	cg, err := os.Open(cgroupDir)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	js, _ := json.Marshal(a)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"="+string(js))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Cloneflags: syscall.CLONE_NEWNET}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	r := bufio.NewReader(stdout)
	line, err := r.ReadString('\n')
	var cookie uint64
	if _, serr := fmt.Sscanf(line, "cookie=%d", &cookie); err != nil || serr != nil {
		t.Fatalf("child cookie line %q: %v %v", line, err, serr)
	}
	setup(cookie)
	fmt.Fprintln(stdin)
	var out childOutput
	if err := json.NewDecoder(r).Decode(&out); err != nil {
		t.Fatalf("child output: %v", err)
	}
	if out.Err != "" {
		t.Fatalf("child: %s", out.Err)
	}
	return out
}

// runChildIn runs the helper in cgroupDir and a new netns and returns its report.
func outRunChild(t *testing.T, cgroupDir string, a childArgs) childOutput {
	t.Helper()
	cg, err := os.Open(cgroupDir)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	js, _ := json.Marshal(a)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"="+string(js))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Cloneflags: syscall.CLONE_NEWNET}
	stdout, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("child: %v", err)
		}
		t.Fatal(err)
	}
	var out childOutput
	if err := json.Unmarshal(stdout, &out); err != nil {
		t.Fatalf("child output %q: %v", stdout, err)
	}
	if out.Err != "" {
		t.Fatalf("child: %s", out.Err)
	}
	return out
}

// earlyClose: each client connects, writes and closes before the proxy accepts; the proxy must still learn every
// original destination (entries are freed by the proxy's socket, not the client's).
func earlyClose(a childArgs, ln net.Listener, out childOutput) childOutput {
	for _, d := range a.Dests {
		c, err := net.DialTimeout("tcp4", d, 2*time.Second)
		if err != nil {
			out.Err = "dial " + d + ": " + err.Error()
			return out
		}
		_, _ = c.Write([]byte("x"))
		c.Close()
	}
	time.Sleep(200 * time.Millisecond) // the clients' sockets are gone (FIN_WAIT2/TIME_WAIT minisocks) by now
	for range a.Dests {
		c, err := ln.Accept()
		if err != nil {
			out.Err = "accept: " + err.Error()
			return out
		}
		od, err := origDst(c.(*net.TCPConn))
		if err != nil {
			out.LateOrig = append(out.LateOrig, "error:"+err.Error())
		} else {
			out.LateOrig = append(out.LateOrig, od.String())
		}
		c.Close()
	}
	return out
}
