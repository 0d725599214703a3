package hostfs

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// SocketNetnsCookie returns the cookie of the network namespace socket fd lives in: the value BPF programs get
// from bpf_get_netns_cookie. The one Go reader of a netns cookie (SO_NETNS_COOKIE needs Linux 5.14).
func SocketNetnsCookie(fd int) (uint64, error) {
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("getsockopt SO_NETNS_COOKIE: %w", err)
	}
	return c, nil
}

// NetnsCookie returns the cookie of the network namespace ns (an open nsfs file), from a socket made inside it.
func NetnsCookie(ns *os.File) (uint64, error) {
	var cookie uint64
	err := InNetns(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		cookie, err = SocketNetnsCookie(fd)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	return cookie, nil
}

// OwnNetnsCookie is the cookie of the caller's network namespace.
func OwnNetnsCookie() (uint64, error) { return ofOwnSocket(SocketNetnsCookie) }

// ofOwnSocket applies read to a socket made in the caller's network namespace.
func ofOwnSocket(read func(fd int) (uint64, error)) (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: %w", err)
	}
	defer unix.Close(fd)
	return read(fd)
}

// InNetns runs fn on a locked OS thread that has entered ns, then puts the thread back.
func InNetns(ns *os.File, fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns: %w", err)
	}
	fnErr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Keep the thread locked: the runtime discards it when the goroutine exits.
		return errors.Join(fnErr, fmt.Errorf("leave netns: %w", err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// inodeIDBit marks a NetnsID that is an nsfs inode number, not a cookie, so the two never compare equal.
const inodeIDBit = 1 << 63

// NetnsID names the network namespace ns for userspace bookkeeping only (pin directory names, matching a
// listener to its netns): its cookie where the kernel reports one (5.14+), else its nsfs inode number with the
// top bit set (Linux 5.10). Never a BPF key: programs see cookies only. An inode is unique among live
// namespaces but may be reused after one is freed, so pins named by it must be removed with their netns.
func NetnsID(ns *os.File) (uint64, error) {
	cookie, err := NetnsCookie(ns)
	if err == nil || !errors.Is(err, unix.ENOPROTOOPT) {
		return cookie, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &st); err != nil {
		return 0, fmt.Errorf("netns id: %w", err)
	}
	return inodeIDBit | st.Ino, nil
}

// SocketNetnsID is NetnsID of the network namespace socket fd lives in (SIOCGSKNS where there is no cookie).
func SocketNetnsID(fd int) (uint64, error) {
	cookie, err := SocketNetnsCookie(fd)
	if err == nil || !errors.Is(err, unix.ENOPROTOOPT) {
		return cookie, err
	}
	return socketNetnsInodeID(fd)
}

// socketNetnsInodeID is the stand-in NetnsID of the netns socket fd lives in (SIOCGSKNS opens that netns).
func socketNetnsInodeID(fd int) (uint64, error) {
	nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		return 0, fmt.Errorf("netns id: SIOCGSKNS: %w", err)
	}
	ns := os.NewFile(uintptr(nsfd), "netns")
	defer ns.Close()
	var st unix.Stat_t
	if err := unix.Fstat(nsfd, &st); err != nil {
		return 0, fmt.Errorf("netns id: %w", err)
	}
	return inodeIDBit | st.Ino, nil
}

// IsNetnsCookie reports whether a NetnsID is a real netns cookie (what BPF programs see), not an inode stand-in.
func IsNetnsCookie(id uint64) bool { return id != 0 && id&inodeIDBit == 0 }

// OwnNetnsID is NetnsID of the caller's network namespace.
func OwnNetnsID() (uint64, error) { return ofOwnSocket(SocketNetnsID) }
