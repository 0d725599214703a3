package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/hostfs"
)

// ErrInboundListenerNotFound: no process holds a TCP listener on the capture port in that netns.
var ErrInboundListenerNotFound = errors.New("no listener on the inbound capture port in this network namespace")

// inbOpenNetns opens a network namespace file and returns it with the namespace's cookie (the value BPF's
// bpf_get_netns_cookie and SO_NETNS_COOKIE report; unlike the nsfs inode it is never reused while the system runs).
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
	cookie, err := hostfs.NetnsID(f) // names pins only: the inbound program keys nothing by netns
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, cookie, nil
}

// FindInboundListener finds a listening TCP socket on port in the network namespace at netnsPath, whichever process
// holds it, and returns a duplicate of it (pidfd_getfd; needs CAP_SYS_PTRACE over that process, which root has).
// The error wraps ErrInboundListenerNotFound when there is none.
func FindInboundListener(netnsPath string, port uint16) (*os.File, error) {
	ns, cookie, err := inbOpenNetns(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("find inbound listener in %s: %w", netnsPath, err)
	}
	defer ns.Close()
	f, err := inbFindListener(ns, cookie, port)
	if err != nil {
		return nil, fmt.Errorf("find inbound listener in %s: %w", netnsPath, err)
	}
	return f, nil
}

func inbFindListener(ns *os.File, cookie uint64, port uint16) (*os.File, error) {
	inodes, err := inbListenerInodes(ns, port)
	if err != nil {
		return nil, err
	}
	if len(inodes) == 0 {
		return nil, fmt.Errorf("%w (port %d)", ErrInboundListenerNotFound, port)
	}
	holders := inbSocketHolders(inodes)
	for _, ino := range inodes {
		for _, h := range holders[ino] {
			f, err := inbGrabFD(h.pid, h.fd)
			if err != nil {
				continue // the process exited or closed it meanwhile: try the next holder
			}
			li, err := inbInspectListener(f)
			if err == nil && li.netnsCookie == cookie && li.port == port {
				return f, nil
			}
			f.Close()
		}
	}
	return nil, fmt.Errorf("%w (port %d: listening sockets exist but no process holding one could be reached)", ErrInboundListenerNotFound, port)
}

// inbListenerInodes lists the inodes of TCP sockets listening on port inside ns: IPv4 first, then dual-stack IPv6
// candidates (inbInspectListener rejects IPv6-only ones). It reads the netns's /proc/net/tcp{,6}, which the TCP
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

// inbSocketHolders scans /proc/*/fd for the given socket inodes.
func inbSocketHolders(inodes []uint32) map[uint32][]inbFDRef {
	want := map[string]uint32{}
	for _, ino := range inodes {
		want["socket:["+strconv.FormatUint(uint64(ino), 10)+"]"] = ino
	}
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
			if ino, ok := want[target]; ok {
				fd, _ := strconv.Atoi(e.Name())
				out[ino] = append(out[ino], inbFDRef{pid, fd})
			}
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
