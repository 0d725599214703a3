package loader

// Tests of the sk_msg fast path (bpf/fastpath.c) on the real kernel: a child in a test cgroup and a fresh netns
// (only lo) plays the app and a relay-like echo proxy on 127.0.0.1:<proxy port> that reads with read() (as the
// fast path requires) and asks SO_ORIGINAL_DST with meshcap's extended buffer.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const fpChildEnv = "MESHCAP_LOADER_FASTPATH_CHILD"

type fpArgs struct {
	ProxyPort uint16
	Conns     int   // concurrent connections, each doing RR ping-pongs then a Bulk upload with half-close
	RR        int   // request/response round trips per connection (Size bytes each way)
	Size      int   // bytes per request
	Bulk      int64 // bytes sent then half-closed; the echo must come back intact
	Hold      bool  // after the first phase, print "ready" and wait for a stdin line, then run it again on the same connections
}

type fpOutput struct {
	Fast, Slow int // accepted sockets whose SO_ORIGINAL_DST answer said fast path / not
	OK         int // connections whose every check passed (twice with Hold)
	Errs       []string
	Err        string
}

func fastPathChildMain() {
	out := runFastPathChild()
	_ = json.NewEncoder(os.Stdout).Encode(out)
	os.Exit(0)
}

// fpOrigDst asks SO_ORIGINAL_DST with a 20-byte buffer (sockaddr_in + flags), as meshcap proxy does.
func fpOrigDst(c *net.TCPConn) (fast bool, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return false, err
	}
	var buf [20]byte
	l := uint32(len(buf))
	var serr error
	_ = raw.Control(func(fd uintptr) {
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IP, 80, uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			serr = e
		}
	})
	if serr != nil {
		return false, serr
	}
	return l == 20 && buf[16]&1 != 0, nil
}

func runFastPathChild() (out fpOutput) {
	var a fpArgs
	if err := json.Unmarshal([]byte(os.Getenv(fpChildEnv)), &a); err != nil {
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
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp4", fmt.Sprintf("127.0.0.1:%d", a.ProxyPort))
	if err != nil {
		out.Err = "listen: " + err.Error()
		return
	}
	defer ln.Close()
	var fast, slow atomic.Int32
	// The "proxy": echo with plain read/write; EOF from the app becomes a half-close towards it.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c *net.TCPConn) {
				defer c.Close()
				if f, err := fpOrigDst(c); err == nil && f {
					fast.Add(1)
				} else {
					slow.Add(1)
				}
				buf := make([]byte, 64<<10)
				for {
					n, rerr := c.Read(buf)
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if rerr != nil {
						_ = c.CloseWrite()
						return
					}
				}
			}(c.(*net.TCPConn))
		}
	}()

	conns := make([]*net.TCPConn, a.Conns)
	for i := range conns {
		c, err := net.DialTimeout("tcp4", fmt.Sprintf("198.51.100.%d:80", i%250+1), 5*time.Second)
		if err != nil {
			out.Err = "dial: " + err.Error()
			return
		}
		conns[i] = c.(*net.TCPConn)
		defer c.Close()
	}
	var mu sync.Mutex
	phase := func(bulk bool) {
		var wg sync.WaitGroup
		for i, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := fpExercise(c, a, i, bulk); err != nil {
					mu.Lock()
					out.Errs = append(out.Errs, fmt.Sprintf("conn %d: %v", i, err))
					mu.Unlock()
					return
				}
				mu.Lock()
				out.OK++
				mu.Unlock()
			}()
		}
		wg.Wait()
	}
	if a.Hold {
		phase(false)
		fmt.Println("ready")
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	}
	phase(true)
	out.Fast, out.Slow = int(fast.Load()), int(slow.Load())
	return out
}

// fpExercise runs RR ping-pongs on c, then (bulk) streams Bulk bytes with a half-close and checks the echo.
func fpExercise(c *net.TCPConn, a fpArgs, seed int, bulk bool) error {
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	rng := rand.New(rand.NewPCG(uint64(seed), 1))
	req, resp := make([]byte, a.Size), make([]byte, a.Size)
	for i := 0; i < a.RR; i++ {
		for j := range req {
			req[j] = byte(rng.Uint32())
		}
		if _, err := c.Write(req); err != nil {
			return fmt.Errorf("rr %d write: %w", i, err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			return fmt.Errorf("rr %d read: %w", i, err)
		}
		if !bytes.Equal(req, resp) {
			return fmt.Errorf("rr %d: echo differs", i)
		}
	}
	if !bulk {
		return nil
	}
	sent, got := sha256.New(), sha256.New()
	werr := make(chan error, 1)
	go func() {
		src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{byte(seed)}), a.Bulk), sent)
		_, err := io.CopyBuffer(struct{ io.Writer }{c}, src, make([]byte, 100<<10))
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	n, err := io.Copy(got, struct{ io.Reader }{c})
	if e := <-werr; e != nil {
		return fmt.Errorf("bulk write: %w", e)
	}
	if err != nil {
		return fmt.Errorf("bulk read after %d bytes: %w", n, err)
	}
	if n != a.Bulk || !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		return fmt.Errorf("bulk echo: %d bytes of %d, equal=%v", n, a.Bulk, bytes.Equal(sent.Sum(nil), got.Sum(nil)))
	}
	return nil
}

// fpRunChild runs the child in cgroupDir and a new netns. mid (with a.Hold) runs between the two phases.
func fpRunChild(t *testing.T, cgroupDir string, a fpArgs, mid func()) fpOutput {
	t.Helper()
	cg, err := os.Open(cgroupDir)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	js, _ := json.Marshal(a)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), fpChildEnv+"="+string(js))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Cloneflags: syscall.CLONE_NEWNET}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	r := bufio.NewReader(stdout)
	if a.Hold {
		line, err := r.ReadString('\n')
		if line != "ready\n" {
			t.Fatalf("child: %q %v", line, err)
		}
		mid()
		fmt.Fprintln(stdin)
	}
	var out fpOutput
	if err := json.NewDecoder(r).Decode(&out); err != nil {
		t.Fatalf("child output: %v", err)
	}
	if out.Err != "" {
		t.Fatalf("child: %s", out.Err)
	}
	return out
}

func fpSockhashEntries(t *testing.T, pinDir string) int {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(mapPin(pinDir, mapSockhash), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	n, err := countEntries(m)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestFastPath: with the fast path on, both directions of captured connections take the sk_msg redirect
// (counters), request/response, 32 MiB bulk with half-close and 64 concurrent connections stay intact, the proxy
// learns it from SO_ORIGINAL_DST, and the sockhash is empty once the connections are closed.
func TestFastPath(t *testing.T) {
	outRequireRoot(t)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	a, err := Attach(cg, outPolicy(t, nil), root, LoadOptions{FastPath: true})
	if err != nil {
		t.Fatal(err)
	}
	one := fpRunChild(t, cg, fpArgs{ProxyPort: 15001, Conns: 1, RR: 500, Size: 100, Bulk: 32 << 20}, nil)
	if one.OK != 1 || len(one.Errs) > 0 || one.Fast != 1 {
		t.Fatalf("one connection: %+v", one)
	}
	st, err := ReadFastPathStats(a.PinDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after one connection: %+v", st)
	// 500 requests + 500 responses at least (a first request that races the handshake goes through TCP and keeps
	// that direction on TCP: then only the responses and the bulk echo are redirected).
	if st.RedirectMsgs < 500 || st.RedirectBytes < 32<<20 {
		t.Errorf("too little redirected: %+v", st)
	}

	many := fpRunChild(t, cg, fpArgs{ProxyPort: 15001, Conns: 64, RR: 100, Size: 1000, Bulk: 1 << 20}, nil)
	if many.OK != 64 || len(many.Errs) > 0 || many.Fast != 64 {
		t.Fatalf("64 connections: %+v", many)
	}
	deadline := time.Now().Add(5 * time.Second)
	for n := fpSockhashEntries(t, a.PinDir); n != 0; n = fpSockhashEntries(t, a.PinDir) {
		if time.Now().After(deadline) {
			t.Fatalf("%d sockets left in %s after every connection closed", n, mapSockhash)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFastPathOffByDefault: without LoadOptions.FastPath nothing enters the sockhash and the proxy is told so
// (it keeps splice).
func TestFastPathOffByDefault(t *testing.T) {
	outRequireRoot(t)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	a, err := Attach(cg, outPolicy(t, nil), root, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := fpRunChild(t, cg, fpArgs{ProxyPort: 15001, Conns: 4, RR: 50, Size: 100, Bulk: 1 << 20}, nil)
	if out.OK != 4 || out.Fast != 0 || out.Slow != 4 {
		t.Fatalf("%+v", out)
	}
	if st, err := ReadFastPathStats(a.PinDir); err != nil || st != (FastPathStats{}) {
		t.Errorf("fast path counters without --fast-path: %+v %v", st, err)
	}
	// Re-attaching with the fast path turns it on for new connections.
	if _, err := Attach(cg, outPolicy(t, nil), root, LoadOptions{FastPath: true}); err != nil {
		t.Fatal(err)
	}
	out = fpRunChild(t, cg, fpArgs{ProxyPort: 15001, Conns: 4, RR: 50, Size: 100}, nil)
	if out.OK != 4 || out.Fast != 4 {
		t.Fatalf("after re-attach with the fast path: %+v", out)
	}
}

// TestFastPathDetachWhileOpen: connections on the fast path keep working after detach (their sockets keep the
// program and the sockhash they were added with); and a re-attach (program replacement) likewise.
func TestFastPathDetachWhileOpen(t *testing.T) {
	outRequireRoot(t)
	for _, tc := range []string{"detach", "reattach"} {
		t.Run(tc, func(t *testing.T) {
			cg := outNewCgroup(t)
			root := outNewPinRoot(t)
			a, err := Attach(cg, outPolicy(t, nil), root, LoadOptions{FastPath: true})
			if err != nil {
				t.Fatal(err)
			}
			var before FastPathStats
			out := fpRunChild(t, cg, fpArgs{ProxyPort: 15001, Conns: 8, RR: 50, Size: 100, Bulk: 4 << 20, Hold: true}, func() {
				before, _ = ReadFastPathStats(a.PinDir)
				var err error
				if tc == "detach" {
					_, err = Detach(cg, root)
				} else {
					_, err = Attach(cg, outPolicy(t, nil), root, LoadOptions{FastPath: true})
				}
				if err != nil {
					t.Error(err)
				}
			})
			if out.OK != 16 || len(out.Errs) > 0 || out.Fast != 8 {
				t.Fatalf("%s while open: %+v", tc, out)
			}
			if before.RedirectMsgs < 8*50 {
				t.Errorf("before %s: %+v", tc, before)
			}
			if tc == "reattach" {
				after, err := ReadFastPathStats(a.PinDir)
				if err != nil || after.RedirectBytes < before.RedirectBytes+8*(4<<20) {
					t.Errorf("after re-attach the open connections must still be redirected: before %+v after %+v %v", before, after, err)
				}
			}
		})
	}
}
