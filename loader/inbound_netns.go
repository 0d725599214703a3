package loader

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/hostfs"
)

// ErrInboundListenerNotFound: no process holds a TCP listener on the capture port in that netns.
var ErrInboundListenerNotFound = errors.New("no listener on the inbound capture port in this network namespace")

// inbOpenNetns opens a network namespace file and returns it with the namespace's NetnsID (its cookie, the value
// BPF's bpf_get_netns_cookie reports; unlike the nsfs inode it is never reused while the system runs).
func inbOpenNetns(path string) (*os.File, uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("open netns: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil || st.Type != unix.NSFS_MAGIC {
		f.Close()
		return nil, 0, fmt.Errorf("%s is not a namespace file (want /var/run/netns/NAME or /proc/PID/ns/net)", path)
	}
	if t, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE); err != nil || t != unix.CLONE_NEWNET {
		f.Close()
		return nil, 0, fmt.Errorf("%s is not a network namespace", path)
	}
	cookie, err := NetnsID(f) // pin names, and in agent mode the key of the inbound cgroup programs
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, cookie, nil
}

// FindInboundListeners finds the listening TCP sockets on port in the network namespace at netnsPath held by a
// process that p exempts (inbExemptOwner), at most one per family (IPv4, IPv6), and returns duplicates of them
// (pidfd_getfd; needs CAP_SYS_PTRACE over that process, which root has). The error wraps
// ErrInboundListenerNotFound when there is none. The caller closes the files.
func FindInboundListeners(netnsPath string, port uint16, p capture.Policy) ([]*os.File, error) {
	ns, cookie, err := inbOpenNetns(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("find inbound listener in %s: %w", netnsPath, err)
	}
	defer ns.Close()
	found, err := inbFindListeners(ns, cookie, port, inbExemptOwner(p))
	if err != nil {
		return nil, fmt.Errorf("find inbound listener in %s: %w", netnsPath, err)
	}
	return found, nil
}

// inbOwnerCheck says whether a listener owned by socket uid sockUID and held by process pid may be registered.
type inbOwnerCheck func(sockUID uint32, pid int) bool

// inbExemptOwner is the user-space twin of bpf/inbound_bind.c's rule: only the proxy's uid (-u) or gid (-g) may
// own the inbound listener. A listener qualifies when its socket was created by an exempt uid, or when the process
// holding it runs as an exempt uid or gid now (a proxy that listened as root and dropped privileges).
func inbExemptOwner(p capture.Policy) inbOwnerCheck {
	return func(sockUID uint32, pid int) bool {
		if slices.Contains(p.ProxyUIDs, sockUID) {
			return true
		}
		uid, gid, err := inbProcessIDs(pid)
		return err == nil && (slices.Contains(p.ProxyUIDs, uid) || slices.Contains(p.ProxyGIDs, gid))
	}
}

// inbProcessIDs reads the effective uid and gid of pid from /proc.
func inbProcessIDs(pid int) (uid, gid uint32, err error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, 0, err
	}
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || (f[0] != "Uid:" && f[0] != "Gid:") {
			continue
		}
		v, err := strconv.ParseUint(f[2], 10, 32) // real, effective, saved, fs: the effective one
		if err != nil {
			return 0, 0, fmt.Errorf("parse %s of pid %d: %w", f[0], pid, err)
		}
		if f[0] == "Uid:" {
			uid = uint32(v)
		} else {
			gid = uint32(v)
		}
		found++
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("no Uid/Gid in /proc/%d/status", pid)
	}
	return uid, gid, nil
}

// inbFindListeners returns one exempt listener per family slot (the first found of each).
func inbFindListeners(ns *os.File, cookie uint64, port uint16, exempt inbOwnerCheck) ([]*os.File, error) {
	var holders map[uint32][]inbFDRef
	if inodes, err := inbListenerInodes(ns, port); err == nil {
		if len(inodes) == 0 {
			return nil, fmt.Errorf("%w (port %d)", ErrInboundListenerNotFound, port)
		}
		want := map[uint32]bool{}
		for _, ino := range inodes {
			want[ino] = true
		}
		holders = inbSocketHolders(func(_ int, ino uint32) bool { return want[ino] })
	} else {
		// sock_diag missing (inet_diag not loadable, module autoload off): every socket held by a process of the
		// netns is a candidate, checked below like the others.
		var st unix.Stat_t
		if err := unix.Fstat(int(ns.Fd()), &st); err != nil {
			return nil, fmt.Errorf("%w (port %d: stat netns: %v)", ErrInboundListenerNotFound, port, err)
		}
		holders = inbSocketHolders(func(pid int, _ uint32) bool { return inbProcInNetns(pid, st.Ino) })
	}
	refused := 0
	bySlot := map[uint32]*os.File{}
	for _, refs := range holders {
		for _, h := range refs {
			f, err := inbGrabFD(h.pid, h.fd)
			if err != nil {
				continue // the process exited or closed it meanwhile: try the next holder
			}
			li, err := inbInspectListener(f)
			var st unix.Stat_t // a socket inode's owner is the uid that created it (what sock_diag reports)
			switch {
			case err != nil || li.netnsCookie != cookie || li.port != port || unix.Fstat(int(f.Fd()), &st) != nil:
			case !exempt(st.Uid, h.pid):
				refused++ // an app listening on the capture port must never get captured traffic
			case bySlot[li.slot] == nil:
				bySlot[li.slot] = f
				continue
			}
			f.Close()
		}
	}
	if len(bySlot) > 0 {
		var out []*os.File
		for _, slot := range []uint32{inbSlotInet, inbSlotInet6} {
			if f := bySlot[slot]; f != nil {
				out = append(out, f)
			}
		}
		return out, nil
	}
	if refused > 0 {
		return nil, fmt.Errorf("%w (port %d: held only by processes that are not the proxy uid/gid (-u/-g))", ErrInboundListenerNotFound, port)
	}
	return nil, fmt.Errorf("%w (port %d: no process holding a listener on it could be reached)", ErrInboundListenerNotFound, port)
}

// inbProcInNetns: process pid lives in the netns with this nsfs inode.
func inbProcInNetns(pid int, netnsIno uint64) bool {
	var st unix.Stat_t
	return unix.Stat(filepath.Join("/proc", strconv.Itoa(pid), "ns", "net"), &st) == nil && st.Ino == netnsIno
}

// inbListenerInodes lists the inodes of TCP sockets listening on port inside ns: IPv4 first, then IPv6. It reads the netns's /proc/net/tcp{,6}, which the TCP
// core provides: sock_diag would need the tcp_diag/inet_diag modules, which a host may not have loaded (or be
// able to autoload).
func inbListenerInodes(ns *os.File, port uint16) ([]uint32, error) {
	var out []uint32
	err := hostfs.InNetns(ns, func() error {
		for _, table := range []string{"tcp", "tcp6"} {
			data, err := os.ReadFile("/proc/thread-self/net/" + table)
			if errors.Is(err, os.ErrNotExist) && table == "tcp6" {
				continue // IPv6 disabled
			}
			if err != nil {
				return err
			}
			out = append(out, procNetListeners(string(data), port)...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list listeners: %w", err)
	}
	return out, nil
}

// procNetListeners parses a /proc/net/tcp{,6} table: inodes of the sockets in state LISTEN (0A) on port.
func procNetListeners(table string, port uint16) []uint32 {
	var out []uint32
	for _, line := range strings.Split(table, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "0A" {
			continue
		}
		_, hexPort, ok := strings.Cut(f[1], ":")
		p, err := strconv.ParseUint(hexPort, 16, 16)
		if !ok || err != nil || uint16(p) != port {
			continue
		}
		if ino, err := strconv.ParseUint(f[9], 10, 32); err == nil && ino != 0 {
			out = append(out, uint32(ino))
		}
	}
	return out
}

type inbFDRef struct{ pid, fd int }

// inbSocketHolders scans /proc/*/fd for sockets that want accepts (by holder pid and socket inode).
func inbSocketHolders(want func(pid int, ino uint32) bool) map[uint32][]inbFDRef {
	out := map[uint32][]inbFDRef{}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fdDir := filepath.Join("/proc", p.Name(), "fd")
		fds, _ := os.ReadDir(fdDir)
		for _, e := range fds {
			target, err := os.Readlink(filepath.Join(fdDir, e.Name()))
			if err != nil || !strings.HasPrefix(target, "socket:[") {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]"), 10, 32)
			if err != nil || !want(pid, uint32(ino)) {
				continue
			}
			fd, _ := strconv.Atoi(e.Name())
			out[uint32(ino)] = append(out[uint32(ino)], inbFDRef{pid, fd})
		}
	}
	return out
}

// inbGrabFD duplicates file descriptor fd of process pid into this process.
func inbGrabFD(pid, fd int) (*os.File, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	nfd, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_getfd %d/%d: %w", pid, fd, err)
	}
	return os.NewFile(uintptr(nfd), fmt.Sprintf("pid %d fd %d", pid, fd)), nil
}

// inbPassthroughSource6 puts ::6/128 on lo in ns, as istio-iptables does when IPv6 is enabled: the sidecar relays
// inbound connections to the app's IPv6 address from ::6, which sk_lookup (like istio's rules) leaves alone. Without
// it the sidecar's bind fails, it falls back to the pod's own address, and sk_lookup would steer that connection
// back to the sidecar. Idempotent. Left in place by detach, as by istio's cleanup: it routes nothing anywhere.
func inbPassthroughSource6(ns *os.File) error {
	err := hostfs.InNetns(ns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		// Why NODAD: even on lo a new IPv6 address is tentative until the kernel's DAD work runs (later, under
		// load), and a bind to a tentative address fails with EADDRNOTAVAIL.
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("::6"), Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrAdd(lo, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("add ::6/128 (the inbound passthrough source) to lo: %w", err)
	}
	return nil
}
