package loader

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/capture"
)

// childDNS is what one UDP query of the child saw.
type childDNS struct {
	Dest    string
	Proxied bool   // the answer came from the child's DNS echo (it prefixes "echo:")
	From    string // the answer's source as recvfrom shows it (IPv4-mapped ones as IPv4)
	Err     string
}

// startDNSEcho answers every datagram on 127.0.0.1:port and [::1]:port with "echo:" and the datagram.
func startDNSEcho(port uint16) (stop func(), err error) {
	var conns []net.PacketConn
	stop = func() {
		for _, c := range conns {
			c.Close()
		}
	}
	for _, a := range []string{fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("[::1]:%d", port)} {
		c, err := net.ListenPacket("udp", a)
		if err != nil {
			stop()
			return nil, err
		}
		conns = append(conns, c)
		go func() {
			buf := make([]byte, 512)
			for {
				n, from, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = c.WriteTo(append([]byte("echo:"), buf[:n]...), from)
			}
		}()
	}
	return stop, nil
}

// dnsOnce sends one datagram to dest ("[v6]:53", or "mapped:a.b.c.d:53" for ::ffff:a.b.c.d) from an unconnected
// dual-stack AF_INET6 socket and reads the answer with its source.
func dnsOnce(dest string) (r childDNS) {
	r.Dest = dest
	d, mapped := strings.CutPrefix(dest, "mapped:")
	ap, err := netip.ParseAddrPort(d)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	addr := ap.Addr().As16() // an IPv4 address becomes ::ffff:a.b.c.d
	if !mapped && ap.Addr().Is4() {
		r.Err = "want an IPv6 or a mapped: destination"
		return r
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer unix.Close(fd)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
	tv := unix.NsecToTimeval(time.Second.Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := unix.Sendto(fd, []byte("q"), 0, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: addr}); err != nil {
		r.Err = err.Error()
		return r
	}
	buf := make([]byte, 64)
	n, from, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	r.Proxied = strings.HasPrefix(string(buf[:n]), "echo:")
	if sa, ok := from.(*unix.SockaddrInet6); ok {
		r.From = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port)).String()
	}
	return r
}

// TestDNSCaptureIPv6: sendmsg6/recvmsg6 with a pod policy (no CLI): in a pod with IPv6 enabled (Policy.IPv6), UDP
// to port 53 of a listed IPv6 server goes to [::1]:<DNS port> and the answer's source is the server; an IPv4-mapped
// server is decided with the IPv4 list and goes to ::ffff:127.0.0.1; unlisted servers and the proxy's uid go direct
// (in the child's netns with only lo: unreachable); without Policy.IPv6 native IPv6 DNS is left alone.
func TestDNSCaptureIPv6(t *testing.T) {
	outRequireRoot(t)
	cg := outNewCgroup(t)
	root := outNewPinRoot(t)
	pol := ipv6Policy(t, true)
	pol.DNS = capture.DNSPolicy{Port: 15054, Servers: []netip.Addr{netip.MustParseAddr("2001:db8:53::1"), netip.MustParseAddr("203.0.113.53")}}
	if _, err := Attach(cg, pol, root, LoadOptions{}); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		"[2001:db8:53::1]:53":    true,
		"mapped:203.0.113.53:53": true,
		"[2001:db8:53::2]:53":    false, // not listed
		"[2001:db8:53::1]:5353":  false, // not port 53
		"mapped:203.0.113.54:53": false,
	}
	run := func(uid int) []childDNS {
		var dests []string
		for d := range want {
			dests = append(dests, d)
		}
		return outRunChild(t, cg, childArgs{ProxyPort: 15011, DNSPort: 15054, DNS: dests, UID: uid, GID: -1}).DNS
	}
	for _, r := range run(-1) {
		d, _ := strings.CutPrefix(r.Dest, "mapped:")
		if r.Proxied != want[r.Dest] {
			t.Errorf("%s: through the DNS port = %v, want %v (%+v)", r.Dest, r.Proxied, want[r.Dest], r)
		} else if r.Proxied && r.From != strings.Replace(d, "mapped:", "", 1) {
			t.Errorf("%s: answer from %s, want the server asked", r.Dest, r.From)
		} else if !r.Proxied && !strings.Contains(r.Err, "unreachable") {
			t.Errorf("%s: not captured but %q, want a direct send (unreachable)", r.Dest, r.Err)
		}
	}
	for _, r := range run(1337) {
		if r.Proxied {
			t.Errorf("%s as uid 1337: captured, want direct", r.Dest)
		}
	}
	pol.IPv6 = false
	if _, err := Attach(cg, pol, root, LoadOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, r := range run(-1) {
		if wantNow := r.Dest == "mapped:203.0.113.53:53"; r.Proxied != wantNow {
			t.Errorf("IPv6 not enabled, %s: through the DNS port = %v, want %v", r.Dest, r.Proxied, wantNow)
		}
	}
}
