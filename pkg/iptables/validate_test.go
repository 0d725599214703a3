package iptables

import (
	"strings"
	"testing"

	"github.com/meshcap/meshcap/pkg/capture"
)

func TestValidateNamesBadValue(t *testing.T) {
	for _, tc := range []struct {
		mod  func(*capture.Config)
		want string
	}{
		{func(c *capture.Config) { c.InboundPortsInclude = "80x" }, `"80x"`},
		{func(c *capture.Config) { c.InboundPortsInclude = "80,70000" }, `"70000"`},
		{func(c *capture.Config) { c.InboundPortsExclude = "-1" }, `"-1"`},
		{func(c *capture.Config) { c.OutboundPortsInclude = "0" }, `"0"`},
		{func(c *capture.Config) { c.OutboundPortsExclude = " 80" }, `" 80"`},
		{func(c *capture.Config) { c.ProxyPort = "abc" }, `"abc"`},
		{func(c *capture.Config) { c.InboundCapturePort = "" }, `""`},
		{func(c *capture.Config) { c.OutboundIPRangesInclude = "10.0.0.0/33" }, `"10.0.0.0/33"`},
		{func(c *capture.Config) { c.OutboundIPRangesInclude = "10.0.0.1" }, `"10.0.0.1"`},
		{func(c *capture.Config) { c.OutboundIPRangesExclude = "*" }, `"*"`},
		{func(c *capture.Config) { c.OutboundIPRangesExclude = "1.1.1.1/8,bogus/8" }, `"bogus/8"`},
		{func(c *capture.Config) { c.ProxyUID = "istio-proxy" }, `"istio-proxy"`},
		{func(c *capture.Config) { c.ProxyGID = "1,x" }, `"x"`},
		{func(c *capture.Config) { c.InboundTProxyMark = "0x10" }, `"0x10"`},
		{func(c *capture.Config) { c.InboundTProxyRouteTable = "main" }, `"main"`},
		{func(c *capture.Config) { c.HostIPv4LoopbackCIDR = "10.0.0.1/8" }, `"10.0.0.1/8"`},
		{func(c *capture.Config) { c.HostIPv4LoopbackCIDR = "127.0.0.1/7" }, `"127.0.0.1/7"`},
		{func(c *capture.Config) { c.ExcludeInterfaces = "eth0 -j ACCEPT" }, `"eth0 -j ACCEPT"`},
		{func(c *capture.Config) { c.KubeVirtInterfaces = "averyveryverylongname" }, `"averyveryverylongname"`},
		{func(c *capture.Config) { c.OwnerGroupsInclude = "a b" }, `"a b"`},
		{func(c *capture.Config) { c.OwnerGroupsInclude = strings.Repeat("1,", 65) }, "at most 64"},
		{func(c *capture.Config) { c.ForceIptablesBinary = "xtables" }, `"xtables"`},
	} {
		c := capture.Default()
		c.ProxyUID, c.ProxyGID = "1337", "1337"
		tc.mod(&c)
		_, err := Build(c, capture.HostFacts{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want error containing %s, got %v", tc.want, err)
		}
	}
	// Accepted as istio does: "*" for -b/-i, trailing commas, 64 owner groups, 127.0.0.1/8.
	c := capture.Default()
	c.ProxyUID, c.ProxyGID = "1337", "1337"
	c.InboundPortsInclude, c.OutboundIPRangesInclude, c.InboundPortsExclude = "*", "*", "6000,7000,"
	c.OwnerGroupsInclude = strings.TrimSuffix(strings.Repeat("1,", 64), ",")
	c.HostIPv4LoopbackCIDR = "127.0.0.1/8"
	if _, err := Build(c, capture.HostFacts{}); err != nil {
		t.Errorf("valid config rejected: %v", err)
	}
}

func TestPayloadPass2Chains(t *testing.T) {
	// A jump to a chain that has no rules of its own gets a -N line after the pass-1 chains.
	p := restorePayload([]Rule{{Table: "nat", Chain: "OUTPUT", Spec: []string{"-j", "ISTIO_X"}}, {Table: "nat", Chain: "ISTIO_Y", Spec: []string{"-j", "RETURN"}}})
	want := "* nat\n-N ISTIO_Y\n-N ISTIO_X\n-A OUTPUT -j ISTIO_X\n-A ISTIO_Y -j RETURN\nCOMMIT\n"
	if p != want {
		t.Errorf("got %q want %q", p, want)
	}
}
