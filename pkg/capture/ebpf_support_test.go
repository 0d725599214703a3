package capture

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestEBPFUnsupported(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		host HostFacts
		want []string
	}{
		{"defaults", func(*Config) {}, HostFacts{}, nil},
		{"istio-init args", func(c *Config) {
			c.InboundInterceptionMode, c.OutboundIPRangesInclude, c.InboundPortsInclude = "REDIRECT", "*", "*"
		}, HostFacts{}, nil},
		{"ipv6 pod: captured (Policy.ForPod)", func(*Config) {}, HostFacts{IPv6: true}, nil},
		{"tproxy", func(c *Config) { c.InboundInterceptionMode = "TPROXY" }, HostFacts{}, []string{"-m TPROXY (sk_lookup already keeps the client address and original destination)"}},
		{"lowercase tproxy is REDIRECT, as istio", func(c *Config) { c.InboundInterceptionMode = "tproxy" }, HostFacts{}, nil},
		{"redirect-dns with servers (captured by the programs)", func(c *Config) { c.RedirectDNS = true }, HostFacts{DNSServersV4: []string{"10.0.0.10"}}, nil},
		{"redirect-dns without servers (istio: off)", func(c *Config) { c.RedirectDNS = true }, HostFacts{}, nil},
		{"capture-all-dns alone changes nothing in istio", func(c *Config) { c.CaptureAllDNS = true }, HostFacts{}, nil},
		{"dns and drop-invalid", func(c *Config) { c.RedirectDNS, c.CaptureAllDNS, c.DropInvalid = true, true, true },
			HostFacts{}, []string{"--drop-invalid"}},
		{"owner groups '*' is the default", func(c *Config) { c.OwnerGroupsInclude = "*" }, HostFacts{}, nil},
		{"owner groups list is expressed (Policy.OwnerGroups)", func(c *Config) { c.OwnerGroupsInclude = "1337,java" }, HostFacts{}, nil},
		{"owner groups empty is expressed (Policy.OutboundNone)", func(c *Config) { c.OwnerGroupsInclude = "" }, HostFacts{}, nil},
		{"owner groups exclude is expressed (Policy.OwnerGroups)", func(c *Config) { c.OwnerGroupsExclude = "2000" }, HostFacts{}, nil},
		{"interfaces", func(c *Config) { c.KubeVirtInterfaces, c.ExcludeInterfaces = "eth1", "eth2" }, HostFacts{},
			[]string{"-k/--kube-virt-interfaces", "-c/--istio-exclude-interfaces"}},
		{"eight proxy uids and gids fit", func(c *Config) { c.ProxyUID, c.ProxyGID = "1,2,3,4,5,6,7,8", "1,2,3,4,5,6,7,8" }, HostFacts{}, nil},
		{"nine proxy uids and gids", func(c *Config) { c.ProxyUID, c.ProxyGID = "1,2,3,4,5,6,7,8,9", "1,2,3,4,5,6,7,8,9" }, HostFacts{},
			[]string{"more than 8 -u/--proxy-uid values", "more than 8 -g/--proxy-gid values"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mod(&c)
			if got := c.EBPFUnsupported(tc.host); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("EBPFUnsupported() = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestPolicyForPod: IPv6 capture follows the pod's IPv6 fact, the one istio writes ip6tables rules by, and nothing
// else in the policy changes.
func TestPolicyForPod(t *testing.T) {
	c := Default()
	c.OutboundIPRangesInclude, c.InboundPortsInclude = "*", "*"
	p, err := c.Policy()
	if err != nil {
		t.Fatal(err)
	}
	if p.IPv6 {
		t.Fatal("Config.Policy set IPv6 without facts")
	}
	for _, v6 := range []bool{true, false} {
		got := p.ForPod(HostFacts{IPv6: v6, DNSServersV4: []string{"10.0.0.10"}})
		want := p
		want.IPv6 = v6
		if !reflect.DeepEqual(got, want) {
			t.Errorf("ForPod(IPv6=%v) = %+v, want %+v", v6, got, want)
		}
	}
}

func TestDNSCapture(t *testing.T) {
	servers := HostFacts{DNSServersV6: []string{"fd00::a"}}
	for _, tc := range []struct {
		redirect, all bool
		host          HostFacts
		want          bool
	}{
		{false, false, servers, false},
		{false, true, servers, false}, // --capture-all-dns alone does nothing
		{true, false, HostFacts{}, false},
		{true, false, servers, true},
		{true, true, HostFacts{}, true},
	} {
		c := Default()
		c.RedirectDNS, c.CaptureAllDNS = tc.redirect, tc.all
		if got := c.DNSCapture(tc.host); got != tc.want {
			t.Errorf("redirect=%v all=%v host=%+v: %v, want %v", tc.redirect, tc.all, tc.host, got, tc.want)
		}
	}
}

func TestDNSPolicy(t *testing.T) {
	servers := HostFacts{DNSServersV4: []string{"10.0.0.10"}, DNSServersV6: []string{"fd00::a", "::ffff:10.0.0.11"}}
	for _, tc := range []struct {
		name          string
		redirect, all bool
		host          HostFacts
		want          DNSPolicy
	}{
		{"off", false, false, servers, DNSPolicy{}},
		{"capture-all-dns alone", false, true, servers, DNSPolicy{}},
		{"servers, mapped one kept as IPv6", true, false, servers, DNSPolicy{Port: 15053, Servers: []netip.Addr{
			netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("fd00::a"), netip.MustParseAddr("::ffff:10.0.0.11")}}},
		{"no servers: istio turns it off", true, false, HostFacts{}, DNSPolicy{}},
		{"all", true, true, HostFacts{}, DNSPolicy{Port: 15053, All: true}},
	} {
		var c Config
		c.RedirectDNS, c.CaptureAllDNS = tc.redirect, tc.all
		if got := c.DNSPolicy(tc.host); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
