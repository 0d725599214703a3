package capture

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"
)

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestDetectIPv6(t *testing.T) {
	for _, tc := range []struct {
		addrs     []netip.Addr
		dualStack bool
		want      bool
		err       error
	}{
		{addrs("127.0.0.1", "10.1.2.3"), false, false, nil},
		{addrs("127.0.0.1", "::1", "2001:db8::3"), false, true, nil},
		{addrs("10.1.2.3", "2001:db8::3"), false, false, nil},            // first address decides
		{addrs("10.1.2.3", "2001:db8::3"), true, true, nil},              // dual-stack: any IPv6
		{addrs("2001:db8::3", "10.1.2.3"), false, true, nil},             // first address decides
		{addrs("fe80::1", "169.254.1.1", "10.1.2.3"), false, false, nil}, // link-local skipped
		{addrs("fe80::1", "2001:db8::3"), false, true, nil},
		{addrs("::ffff:10.1.2.3"), false, true, nil}, // IPv4-mapped counts as IPv6
		{addrs("10.1.2.3"), true, false, nil},
		{addrs("127.0.0.1", "::1", "fe80::1"), false, false, ErrNoLocalAddress},
		{nil, true, false, ErrNoLocalAddress},
	} {
		got, err := DetectIPv6(tc.addrs, tc.dualStack)
		if got != tc.want || !errors.Is(err, tc.err) {
			t.Errorf("DetectIPv6(%v, %v) = %v, %v; want %v, %v", tc.addrs, tc.dualStack, got, err, tc.want, tc.err)
		}
	}
}

func TestParseResolvConf(t *testing.T) {
	v4, v6 := ParseResolvConf([]byte(`# comment
search example.com
nameserver 127.0.0.53
nameserver ::127.0.0.53
nameserver FD00::A  # trailing comment
nameserver ::ffff:10.0.0.1
nameserver fe80::1%eth0
nameserver not-an-ip
options ndots:5
 nameserver 10.0.0.10
`))
	if want := []string{"127.0.0.53", "10.0.0.10"}; !reflect.DeepEqual(v4, want) {
		t.Errorf("v4 = %q, want %q", v4, want)
	}
	if want := []string{"::7f00:35", "fd00::a", "::ffff:10.0.0.1", "fe80::1"}; !reflect.DeepEqual(v6, want) {
		t.Errorf("v6 = %q, want %q", v6, want)
	}
	if v4, v6 := ParseResolvConf(nil); v4 != nil || v6 != nil {
		t.Errorf("empty file: %q %q", v4, v6)
	}
}

func TestHostFactsReadsResolvConfOnlyWhenNeeded(t *testing.T) {
	read := 0
	src := HostSource{
		Addrs:      func() ([]netip.Addr, error) { return addrs("10.1.2.3"), nil },
		ResolvConf: func() ([]byte, error) { read++; return []byte("nameserver 1.1.1.1\n"), nil },
	}
	c := Default()
	for _, tc := range []struct {
		dns, all bool
		reads    int
	}{{false, false, 0}, {true, true, 0}, {true, false, 1}} {
		read = 0
		c.RedirectDNS, c.CaptureAllDNS = tc.dns, tc.all
		f, err := src.Facts(c)
		if err != nil || read != tc.reads {
			t.Errorf("dns=%v all=%v: reads=%d err=%v", tc.dns, tc.all, read, err)
		}
		if tc.reads == 1 && !reflect.DeepEqual(f.DNSServersV4, []string{"1.1.1.1"}) {
			t.Errorf("servers %q", f.DNSServersV4)
		}
	}
}

// The pod's own addresses reach the eBPF policy: every address of the netns, loopback and link-local included (the
// kernel routes all of them over lo), also where istio finds no address to decide IPv6 from.
func TestLocalAddrsReachPolicy(t *testing.T) {
	list := addrs("127.0.0.1", "::1", "10.1.2.3", "fe80::1")
	src := HostSource{Addrs: func() ([]netip.Addr, error) { return list, nil }}
	c := Default()
	f, err := src.Facts(c)
	if err != nil || !reflect.DeepEqual(f.LocalAddrs, list) {
		t.Fatalf("Facts() = %+v, %v; want LocalAddrs %v", f, err, list)
	}
	p, err := c.Policy()
	if err != nil {
		t.Fatal(err)
	}
	if got := p.ForPod(f).LocalAddrs; !reflect.DeepEqual(got, list) {
		t.Errorf("ForPod: LocalAddrs %v, want %v", got, list)
	}
	onlyLo := HostSource{Addrs: func() ([]netip.Addr, error) { return addrs("127.0.0.1"), nil }}
	if f, err := onlyLo.Facts(c); !errors.Is(err, ErrNoLocalAddress) || len(f.LocalAddrs) != 1 {
		t.Errorf("loopback-only netns: %+v, %v; want its address and ErrNoLocalAddress", f, err)
	}
}

// ISTIO_OUTBOUND_OWNER_GROUPS="" (istio: a bare RETURN after the owner rules) is Policy.OutboundNone; "*" is not.
func TestOwnerGroupsEmptyIsOutboundNone(t *testing.T) {
	for v, want := range map[string]bool{"": true, "*": false, "2000": false} {
		c := Default()
		c.OwnerGroupsInclude = v
		p, err := c.Policy()
		if err != nil || p.OutboundNone != want {
			t.Errorf("OwnerGroupsInclude %q: OutboundNone %v (%v), want %v", v, p.OutboundNone, err, want)
		}
	}
}
