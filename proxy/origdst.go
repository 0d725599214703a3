package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h).
const (
	soOriginalDst     = 80
	ip6tSoOriginalDst = 80
)

// Resolver answers the original destination of an accepted connection, for example from a BPF map filled by
// the capture programs. It is asked first; ok=false (or an error) makes the proxy try its own methods.
// fd is the accepted socket (borrowed: do not close or keep it) and peer its remote address.
// It is called concurrently from several goroutines and must not block.
type Resolver interface {
	OriginalDst(dir Direction, fd int, peer netip.AddrPort) (dst netip.AddrPort, ok bool, err error)
}

// ResolverFunc adapts a function to Resolver.
type ResolverFunc func(dir Direction, fd int, peer netip.AddrPort) (netip.AddrPort, bool, error)

// OriginalDst calls f.
func (f ResolverFunc) OriginalDst(dir Direction, fd int, peer netip.AddrPort) (netip.AddrPort, bool, error) {
	return f(dir, fd, peer)
}

// OrigDstExt describes meshcap's extended SO_ORIGINAL_DST answer (struct mc_origdst_ext of the cgroup/getsockopt
// program): with a buffer of Size bytes, the program also says whether the accepted socket is on the sk_msg fast
// path, and FastPath reads that from the answer. Netfilter (iptables mode) writes only the sockaddr_in. The layout
// belongs to the BPF program; the proxy does not import the loader (nor cilium/ebpf), so the command that builds
// the proxy registers it (RegisterOrigDstExt) from the loader's generated types. Unregistered, the proxy asks for
// the plain sockaddr_in and never takes a socket for a fast-path one.
type OrigDstExt struct {
	Size     int
	FastPath func(answer []byte) bool
}

var origDstExt atomic.Pointer[OrigDstExt]

// RegisterOrigDstExt sets the extended answer's layout for every proxy of this process.
func RegisterOrigDstExt(ext OrigDstExt) { origDstExt.Store(&ext) }

// errNoOrigDst: no method knew the original destination.
var errNoOrigDst = errors.New("original destination unknown")

// originalDst runs the resolution chain described in the package doc. listenAddr is the address of the listener
// that accepted c. fast reports that c is on the eBPF fast path (learned from the SO_ORIGINAL_DST answer only:
// a Resolver cannot tell, so a Resolver must not be combined with `ebpf attach --fast-path`).
func (p *Proxy) originalDst(dir Direction, c *net.TCPConn, listenAddr netip.AddrPort) (dst netip.AddrPort, fast bool, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, false, fmt.Errorf("get original dst: %w", err)
	}
	peer := tcpAddrPort(c.RemoteAddr())
	if cerr := rc.Control(func(fd uintptr) { dst, fast, err = p.originalDstFD(dir, int(fd), peer, listenAddr) }); cerr != nil {
		return netip.AddrPort{}, false, fmt.Errorf("get original dst: %w", cerr)
	}
	return dst, fast, err
}

// originalDstFD is originalDst on a raw accepted socket (both engines).
func (p *Proxy) originalDstFD(dir Direction, fd int, peer, listenAddr netip.AddrPort) (netip.AddrPort, bool, error) {
	if p.cfg.Resolver != nil {
		dst, ok, err := p.cfg.Resolver.OriginalDst(dir, fd, peer)
		if err == nil && ok {
			return unmapAddrPort(dst), false, nil
		}
		if err != nil && p.debug() {
			p.log.Debug("resolver failed, falling back", zapDir(dir), zapErr(err))
		}
	}
	if dir == Inbound {
		// sk_lookup (or TPROXY) steering: no NAT, the local address is the original destination.
		if sa, err := unix.Getsockname(fd); err == nil {
			if local := fromSockaddr(sa); local.IsValid() && local.Port() != listenAddr.Port() {
				return local, false, nil
			}
		}
	}
	v6 := listenAddr.Addr().Is6() && !listenAddr.Addr().Is4In6()
	return getOriginalDstFD(fd, v6)
}

// GetOriginalDst asks the socket for SO_ORIGINAL_DST: answered by conntrack under iptables NAT, or by a
// cgroup/getsockopt BPF program in eBPF mode. IPv4 (and v4-mapped) sockets use SOL_IP, IPv6 sockets SOL_IPV6.
func GetOriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	dst, _, err := getOriginalDst(c)
	return dst, err
}

// getOriginalDst is GetOriginalDst that also reports whether c is on the eBPF fast path.
func getOriginalDst(c *net.TCPConn) (netip.AddrPort, bool, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, false, fmt.Errorf("get original dst: %w", err)
	}
	v6 := false
	if la := tcpAddrPort(c.LocalAddr()); la.IsValid() && la.Addr().Is6() && !la.Addr().Is4In6() {
		v6 = true
	}
	var dst netip.AddrPort
	var fast bool
	var serr error
	cerr := rc.Control(func(fd uintptr) { dst, fast, serr = getOriginalDstFD(int(fd), v6) })
	if cerr != nil {
		return netip.AddrPort{}, false, fmt.Errorf("get original dst: %w", cerr)
	}
	if serr != nil {
		return netip.AddrPort{}, false, serr
	}
	return dst, fast, nil
}

func getOriginalDstFD(fd int, v6 bool) (netip.AddrPort, bool, error) {
	if v6 {
		var sa unix.RawSockaddrInet6
		l := uint32(unix.SizeofSockaddrInet6)
		if err := getsockopt(fd, unix.SOL_IPV6, ip6tSoOriginalDst, unsafe.Pointer(&sa), &l); err != nil {
			return netip.AddrPort{}, false, fmt.Errorf("getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST): %w", err)
		}
		if sa.Family != unix.AF_INET6 || l < unix.SizeofSockaddrInet6 {
			return netip.AddrPort{}, false, fmt.Errorf("getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST): bad answer (family %d, len %d)", sa.Family, l)
		}
		return unmapAddrPort(netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), ntohs(sa.Port))), false, nil
	}
	var arr [64]byte // no allocation per connection; an extended answer is far smaller
	buf := arr[:min(len(arr), max(unix.SizeofSockaddrInet4, extSize()))]
	l := uint32(len(buf))
	if err := getsockopt(fd, unix.SOL_IP, soOriginalDst, unsafe.Pointer(&buf[0]), &l); err != nil {
		return netip.AddrPort{}, false, fmt.Errorf("getsockopt(SOL_IP, SO_ORIGINAL_DST): %w", err)
	}
	sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&buf[0]))
	if sa.Family != unix.AF_INET || l < 8 {
		return netip.AddrPort{}, false, fmt.Errorf("getsockopt(SOL_IP, SO_ORIGINAL_DST): bad answer (family %d, len %d)", sa.Family, l)
	}
	fast := false
	if ext := origDstExt.Load(); ext != nil && int(l) >= ext.Size {
		fast = ext.FastPath(buf[:l])
	}
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), ntohs(sa.Port)), fast, nil
}

// extSize is the buffer size that asks for the extended answer (0 when none is registered).
func extSize() int {
	if ext := origDstExt.Load(); ext != nil {
		return ext.Size
	}
	return 0
}

func getsockopt(fd, level, name int, val unsafe.Pointer, vallen *uint32) error {
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name),
		uintptr(val), uintptr(unsafe.Pointer(vallen)), 0)
	if e != 0 {
		return syscall.Errno(e)
	}
	return nil
}

// ntohs converts the network-order port field of a raw sockaddr.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// tcpAddrPort converts a net.Addr from a TCP socket without allocating; invalid if it is not one.
func tcpAddrPort(a net.Addr) netip.AddrPort {
	ta, ok := a.(*net.TCPAddr)
	if !ok || ta == nil {
		return netip.AddrPort{}
	}
	return unmapAddrPort(ta.AddrPort())
}

func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	if ap.Addr().Is4In6() {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return ap
}
