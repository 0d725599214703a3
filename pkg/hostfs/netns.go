package hostfs

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// SocketNetnsCookie returns the cookie of the network namespace socket fd lives in: the value BPF programs get
// from bpf_get_netns_cookie, by SO_NETNS_COOKIE (Linux 5.14+; before, the error wraps unix.ENOPROTOOPT). Callers
// use loader.NetnsCookie, which also reads it where the kernel has no SO_NETNS_COOKIE.
func SocketNetnsCookie(fd int) (uint64, error) {
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("getsockopt SO_NETNS_COOKIE: %w", err)
	}
	return c, nil
}

// NetnsCookie is SocketNetnsCookie of a socket made inside the network namespace ns (an open nsfs file).
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

// inodeIDBit marks a netns id that is an nsfs inode number, not a cookie, so the two never compare equal.
const inodeIDBit = 1 << 63

// NetnsInodeID is the stand-in id of the network namespace ns where no cookie can be read (loader.NetnsID): its
// nsfs inode number with the top bit set. Never a BPF key: programs see cookies only. An inode is unique among live
// namespaces but may be reused after one is freed, so pins named by it must be removed with their netns.
func NetnsInodeID(ns *os.File) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &st); err != nil {
		return 0, fmt.Errorf("netns id: %w", err)
	}
	return inodeIDBit | st.Ino, nil
}

// SocketNetns opens the network namespace socket fd lives in (SIOCGSKNS).
func SocketNetns(fd int) (*os.File, error) {
	nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		return nil, fmt.Errorf("netns of socket: SIOCGSKNS: %w", err)
	}
	return os.NewFile(uintptr(nsfd), "netns"), nil
}

// IsNetnsCookie reports whether a netns id is a real netns cookie (what BPF programs see), not an inode stand-in.
func IsNetnsCookie(id uint64) bool { return id != 0 && id&inodeIDBit == 0 }
