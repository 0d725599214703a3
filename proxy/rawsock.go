package proxy

import (
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Raw socket helpers of the event-loop engine: its sockets never enter Go's netpoller, so that a connection
// wakes exactly one thread (the loop that owns it) and costs no goroutine.

// listenBacklog is passed to listen(2); the kernel caps it at net.core.somaxconn.
const listenBacklog = 4096

// listenRaw opens a non-blocking TCP listener on ap (IPv6-only for an IPv6 literal, like listenTCP).
func listenRaw(ap netip.AddrPort) (int, netip.AddrPort, error) {
	ap = unmapAddrPort(ap)
	family := unix.AF_INET
	if ap.Addr().Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, netip.AddrPort{}, fmt.Errorf("socket: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = unix.Close(fd)
		}
	}()
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return -1, netip.AddrPort{}, fmt.Errorf("setsockopt SO_REUSEADDR: %w", err)
	}
	if family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return -1, netip.AddrPort{}, fmt.Errorf("setsockopt IPV6_V6ONLY: %w", err)
		}
	}
	if err := unix.Bind(fd, toSockaddr(ap)); err != nil {
		return -1, netip.AddrPort{}, fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(fd, listenBacklog); err != nil {
		return -1, netip.AddrPort{}, fmt.Errorf("listen: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return -1, netip.AddrPort{}, fmt.Errorf("getsockname: %w", err)
	}
	ok = true
	return fd, fromSockaddr(sa), nil
}

func toSockaddr(ap netip.AddrPort) unix.Sockaddr {
	if a := ap.Addr().Unmap(); a.Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

func fromSockaddr(sa unix.Sockaddr) netip.AddrPort {
	switch s := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(s.Addr), uint16(s.Port))
	case *unix.SockaddrInet6:
		return unmapAddrPort(netip.AddrPortFrom(netip.AddrFrom16(s.Addr), uint16(s.Port)))
	}
	return netip.AddrPort{}
}

// sendNoSignal writes b to a socket without raising SIGPIPE on a closed peer (EPIPE instead).
func sendNoSignal(fd int, b []byte) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)),
		unix.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawConn exposes a raw listener fd as a syscall.Conn (for RegisterInboundListener). The proxy owns the fd.
type rawConn struct{ fd int }

func (c rawConn) SyscallConn() (syscall.RawConn, error) { return c, nil }
func (c rawConn) Control(f func(fd uintptr)) error      { f(uintptr(c.fd)); return nil }
func (c rawConn) Read(f func(fd uintptr) bool) error    { f(uintptr(c.fd)); return nil }
func (c rawConn) Write(f func(fd uintptr) bool) error   { f(uintptr(c.fd)); return nil }
