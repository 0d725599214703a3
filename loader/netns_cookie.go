package loader

// The netns cookie in Go: the one owner of "the cookie of this network namespace", the value bpf_get_netns_cookie
// gives the programs for its sockets and the key agent mode enrolls a pod by. Every Go caller (the CNI plugin, the
// agent, inbound pins, listener matching, the probe) reads it here. Two ways, tried in this order:
//   - SO_NETNS_COOKIE on a socket made inside the netns (Linux 5.14+, hostfs.SocketNetnsCookie);
//   - before 5.14, the reader: mc_netns_cookie_read (bpf/netns_cookie.c) attached to a private cgroup made for one
//     read, and a short child process (this binary, netnsCookieChildMain) forked from a thread inside the netns
//     straight into that cgroup (clone3 CLONE_INTO_CGROUP, Linux 5.7+). Its one socket runs the program, which
//     writes the cookie into a map the parent reads after the child exits; then link, program, map and cgroup
//     are removed. On 5.10 a netns gets its cookie the first time a program asks, so this read fixes the value the
//     capture programs see later.
//
// Invariants: a cookie is the kernel's, never 0 and never an inode number. NetnsID's stand-in (the nsfs inode with
// the top bit set, hostfs.IsNetnsCookie false) names a netns only in a process where neither way works, so it
// never becomes a BPF key; once the reader has worked in a process its failures are errors, never a stand-in, so
// one process never names a netns two ways.

//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -no-global-types netnsCookie ../bpf/netns_cookie.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/hostfs"
)

// ErrNoNetnsCookie means this process can read no netns cookie: the kernel has no SO_NETNS_COOKIE and the reader
// cannot run here (or MESHCAP_PROBE_DISABLE says so). Agent mode is then unavailable.
var ErrNoNetnsCookie = errors.New("no netns cookie readable from userspace")

// Probe checks (and MESHCAP_PROBE_DISABLE names) of the netns cookie: SO_NETNS_COOKIE (disabled, the readers take
// the cgroup/sock_create way), and whether this process can read a cookie at all (disabled, no way: NetnsID gives
// stand-ins and agent mode is unavailable).
const (
	CheckSockoptNetnsCookie   = "sockopt:so_netns_cookie"
	CheckUserspaceNetnsCookie = "userspace:netns_cookie"
)

// netnsCookieChildArg0 is argv[0] of the reader's child: /proc/self/exe started under this name only makes a socket.
const netnsCookieChildArg0 = "meshcap-netns-cookie-reader"

// netnsCookieTimeout bounds one read (a child start on a slow emulated VM included).
const netnsCookieTimeout = 30 * time.Second

// readerWorked is set once the reader has returned a cookie in this process.
var readerWorked atomic.Bool

func init() {
	// The reader's child: every binary that links the loader can be it, with nothing to wire in its main.
	if len(os.Args) == 1 && os.Args[0] == netnsCookieChildArg0 {
		os.Exit(netnsCookieChildMain())
	}
}

// netnsCookieChildMain makes one socket: the child was started inside the netns and the reader's cgroup, so the
// socket's creation runs mc_netns_cookie_read there.
func netnsCookieChildMain() int {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "socket: %v\n", err)
		return 1
	}
	unix.Close(fd)
	return 0
}

// NetnsCookie returns the cookie of the network namespace ns (an open nsfs file). The error wraps ErrNoNetnsCookie
// when this process has no way to read one.
func NetnsCookie(ns *os.File) (uint64, error) {
	return netnsCookie(ns, func() (uint64, error) { return hostfs.NetnsCookie(ns) })
}

// netnsCookie is NetnsCookie with the SO_NETNS_COOKIE read given (on a socket of ns, or on a new one made there).
func netnsCookie(ns *os.File, bySockopt func() (uint64, error)) (uint64, error) {
	if probeDisabled(CheckUserspaceNetnsCookie) {
		return 0, fmt.Errorf("%w: %s disabled by %s", ErrNoNetnsCookie, CheckUserspaceNetnsCookie, ProbeDisableEnv)
	}
	if !probeDisabled(CheckSockoptNetnsCookie) {
		cookie, err := bySockopt()
		if err == nil || !errors.Is(err, unix.ENOPROTOOPT) {
			return cookie, err
		}
	}
	return readNetnsCookie(ns)
}

// OwnNetnsCookie is NetnsCookie of the calling thread's network namespace.
func OwnNetnsCookie() (uint64, error) { return ofOwnNetns(NetnsCookie) }

// NetnsID names the network namespace ns for userspace: its cookie, or where NetnsCookie fails with
// ErrNoNetnsCookie the nsfs inode stand-in (hostfs.NetnsInodeID; pins and listener matching only, never a key).
func NetnsID(ns *os.File) (uint64, error) {
	cookie, err := NetnsCookie(ns)
	return cookieOrStandIn(ns, cookie, err)
}

// cookieOrStandIn is NetnsID's choice after a NetnsCookie read of ns.
func cookieOrStandIn(ns *os.File, cookie uint64, err error) (uint64, error) {
	if err == nil || !errors.Is(err, ErrNoNetnsCookie) {
		return cookie, err
	}
	return hostfs.NetnsInodeID(ns)
}

// SocketNetnsID is NetnsID of the network namespace socket fd lives in.
func SocketNetnsID(fd int) (uint64, error) {
	id, _, err := socketNetnsIDInode(fd)
	return id, err
}

// socketNetnsIDInode is SocketNetnsID with the nsfs inode of that netns.
func socketNetnsIDInode(fd int) (id, inode uint64, err error) {
	ns, err := hostfs.SocketNetns(fd)
	if err != nil {
		return 0, 0, err
	}
	defer ns.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &st); err != nil {
		return 0, 0, fmt.Errorf("netns of socket: %w", err)
	}
	cookie, err := netnsCookie(ns, func() (uint64, error) { return hostfs.SocketNetnsCookie(fd) })
	id, err = cookieOrStandIn(ns, cookie, err)
	return id, st.Ino, err
}

func ofOwnNetns(read func(*os.File) (uint64, error)) (uint64, error) {
	ns, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	defer ns.Close()
	return read(ns)
}

// probeDisabled reports whether MESHCAP_PROBE_DISABLE names check: the same switch that makes the probe report it
// missing makes the readers skip it, so a test can take the 5.10 path (or no path) on any kernel.
func probeDisabled(check string) bool {
	toks, err := ParseProbeDisable(os.Getenv(ProbeDisableEnv))
	return err == nil && slices.ContainsFunc(toks, func(tok string) bool { return disableMatches(tok, check) })
}

// readNetnsCookie reads the cookie of ns with the reader (see the file comment).
func readNetnsCookie(ns *os.File) (uint64, error) {
	r, err := newNetnsCookieReader()
	if err == nil {
		defer r.close()
		var started bool
		var cookie uint64
		cookie, started, err = r.read(ns)
		if err == nil {
			readerWorked.Store(true)
			return cookie, nil
		}
		if started {
			return 0, fmt.Errorf("netns cookie reader: %w", err)
		}
	}
	if readerWorked.Load() {
		return 0, fmt.Errorf("netns cookie reader: %w", err)
	}
	return 0, fmt.Errorf("%w (no SO_NETNS_COOKIE, which needs Linux 5.14; the cgroup/sock_create reader: %v)", ErrNoNetnsCookie, err)
}

// netnsCookieReader is one read's private cgroup with mc_netns_cookie_read attached.
type netnsCookieReader struct {
	cgroup string
	objs   netnsCookieObjects
	link   link.Link
}

func newNetnsCookieReader() (_ *netnsCookieReader, err error) {
	root, err := hostfs.Cgroup2Root()
	if err != nil {
		return nil, err
	}
	if err := allowBPFMemory(); err != nil {
		return nil, err
	}
	r := &netnsCookieReader{}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	if r.cgroup, err = makeTempCgroup(root, "meshcap-netns-cookie"); err != nil {
		return nil, err
	}
	if err := loadNetnsCookieObjects(&r.objs, nil); err != nil {
		return nil, fmt.Errorf("load %s: %w", "netns_cookie.c", err)
	}
	r.link, err = link.AttachCgroup(link.CgroupOptions{Path: r.cgroup, Attach: ebpf.AttachCGroupInetSockCreate,
		Program: r.objs.McNetnsCookieRead})
	if err != nil {
		return nil, fmt.Errorf("attach sock_create to %s: %w", r.cgroup, err)
	}
	return r, nil
}

// read starts the child inside ns and r's cgroup and returns the cookie its socket recorded; started says that the
// child ran (a later failure is about this read, not about the reader).
func (r *netnsCookieReader) read(ns *os.File) (cookie uint64, started bool, err error) {
	cg, err := os.Open(r.cgroup)
	if err != nil {
		return 0, false, fmt.Errorf("open %s: %w", r.cgroup, err)
	}
	defer cg.Close()
	ctx, cancel := context.WithTimeout(context.Background(), netnsCookieTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Args, cmd.Env = []string{netnsCookieChildArg0}, []string{}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	// The child inherits the netns of the thread that forks it.
	if err := hostfs.InNetns(ns, cmd.Start); err != nil {
		return 0, false, fmt.Errorf("start child in %s: %w", r.cgroup, err)
	}
	if err := cmd.Wait(); err != nil {
		return 0, true, fmt.Errorf("child: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := r.objs.McNetnsCookieOut.Lookup(uint32(0), &cookie); err != nil {
		return 0, true, fmt.Errorf("read %s: %w", "mc_netns_cookie_out", err)
	}
	if cookie == 0 {
		return 0, true, errors.New("the child's socket recorded no cookie")
	}
	return cookie, true, nil
}

// close detaches and unloads the program and removes the cgroup (the child has been reaped: it is empty).
func (r *netnsCookieReader) close() {
	if r.link != nil {
		_ = r.link.Close()
	}
	_ = r.objs.Close()
	if r.cgroup != "" {
		removeTempCgroup(r.cgroup)
	}
}

// netnsCookieProbeItems are the probe's checks of the two ways: SO_NETNS_COOKIE (ScopeVariant: it only picks the
// way), and whether this process can read a cookie at all (ScopeAgent: agent mode keys pods by it).
func netnsCookieProbeItems() []probeItem {
	return []probeItem{
		{CheckSockoptNetnsCookie, ScopeVariant, func(*probeRun) (string, error) {
			if _, err := ofOwnNetns(hostfs.NetnsCookie); err != nil {
				return "", err
			}
			return "available", nil
		}},
		{CheckUserspaceNetnsCookie, ScopeAgent, (*probeRun).checkUserspaceNetnsCookie},
	}
}

func (r *probeRun) checkUserspaceNetnsCookie() (string, error) {
	if !slices.ContainsFunc(r.disable, func(tok string) bool { return disableMatches(tok, CheckSockoptNetnsCookie) }) {
		if _, err := ofOwnNetns(hostfs.NetnsCookie); err == nil {
			return "by SO_NETNS_COOKIE", nil
		}
	}
	if _, err := ofOwnNetns(readNetnsCookie); err != nil {
		return "", err
	}
	return "by a cgroup/sock_create program in a private cgroup (no SO_NETNS_COOKIE before Linux 5.14)", nil
}
