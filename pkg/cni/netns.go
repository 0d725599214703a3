package cni

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// ErrNetnsGone means the network namespace path does not exist (any more).
var ErrNetnsGone = errors.New("network namespace gone")

// NetnsID identifies a network namespace: its cookie (what BPF programs see through bpf_get_netns_cookie)
// and its inode (what /proc/<pid>/ns/net shows).
type NetnsID struct {
	Cookie uint64
	Inode  uint64
}

// ReadNetnsID opens the netns at path and reads its cookie with SO_NETNS_COOKIE on a socket created inside it.
// The calling goroutine's thread enters the netns only for the socket() call.
func ReadNetnsID(path string) (NetnsID, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return NetnsID{}, fmt.Errorf("open netns %q: %w", path, ErrNetnsGone)
	}
	if err != nil {
		return NetnsID{}, fmt.Errorf("open netns %q: %w", path, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return NetnsID{}, fmt.Errorf("stat netns %q: %w", path, err)
	}
	var nsfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &nsfs); err != nil || uint32(nsfs.Type) != uint32(unix.NSFS_MAGIC) {
		return NetnsID{}, fmt.Errorf("netns %q: not a namespace file", path)
	}

	fd, err := socketIn(int(f.Fd()))
	if err != nil {
		return NetnsID{}, fmt.Errorf("netns %q: %w", path, err)
	}
	defer unix.Close(fd)
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return NetnsID{}, fmt.Errorf("netns %q: getsockopt SO_NETNS_COOKIE: %w", path, err)
	}
	return NetnsID{Cookie: cookie, Inode: st.Ino}, nil
}

// socketIn creates a socket inside the netns nsfd (a socket keeps the netns it was created in).
func socketIn(nsfd int) (int, error) {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("open own netns: %w", err)
	}
	defer orig.Close()
	if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("setns: %w", err)
	}
	fd, serr := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread is stuck in the pod netns: keep it locked so the runtime throws it away.
		if serr == nil {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("return to own netns: %w", err)
	}
	runtime.UnlockOSThread()
	if serr != nil {
		return -1, fmt.Errorf("socket: %w", serr)
	}
	return fd, nil
}
