package proxy

import (
	"net/netip"
	"testing"
)

func TestIsLoop(t *testing.T) {
	listeners := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:15001"), netip.MustParseAddrPort("0.0.0.0:15006")}
	ports := []uint16{15001, 15006, 15000}
	podIP := netip.MustParseAddr("198.18.0.1")
	isLocal := func(a netip.Addr) bool { return a == podIP }
	for _, tc := range []struct {
		dst  string
		loop bool
	}{
		{"127.0.0.1:15001", true},          // a listener exactly
		{"0.0.0.0:15006", true},            // listener exactly
		{"127.0.0.5:15006", true},          // own port on loopback
		{"198.18.0.1:15006", true},         // own port on the pod's address
		{"198.18.0.1:15000", true},         // admin port on the pod's address
		{"[::ffff:127.0.0.1]:15001", true}, // v4-mapped
		{"[::1]:15001", true},              // IPv6 loopback
		{"198.18.0.2:15001", false},        // own port, remote address
		{"198.18.0.1:8080", false},         // local address, other port
		{"127.0.0.1:8080", false},          // loopback, other port
		{"10.0.0.1:80", false},
	} {
		if got := isLoop(netip.MustParseAddrPort(tc.dst), listeners, ports, isLocal); got != tc.loop {
			t.Errorf("isLoop(%s) = %v, want %v", tc.dst, got, tc.loop)
		}
	}
}

func TestUpstreamSet(t *testing.T) {
	var s upstreamSet
	a := netip.MustParseAddrPort("127.0.0.1:40000")
	dst := netip.MustParseAddrPort("198.18.0.2:8080")
	if s.contains(a, dst) {
		t.Fatal("empty set contains an address")
	}
	s.add(a, dst)
	if !s.contains(a, dst) || s.contains(netip.MustParseAddrPort("127.0.0.1:40001"), dst) {
		t.Fatal("contains after add is wrong")
	}
	// connect() may give the same local port to a socket towards another destination: not a loop.
	if s.contains(a, netip.MustParseAddrPort("127.0.0.1:15001")) {
		t.Fatal("same local address, other destination: reported as a loop")
	}
	s.remove(a)
	if s.contains(a, dst) {
		t.Fatal("contains after remove")
	}
	s.add(netip.AddrPort{}, dst) // ignored
	if s.contains(netip.AddrPort{}, dst) {
		t.Fatal("invalid address stored")
	}
}

func TestIsLocalAddr(t *testing.T) {
	if !isLocalAddr(netip.MustParseAddr("127.0.0.1")) {
		t.Error("127.0.0.1 is not local")
	}
	if isLocalAddr(netip.MustParseAddr("198.19.255.254")) {
		t.Error("198.19.255.254 is local")
	}
}
