package capture

import (
	"reflect"
	"testing"
)

func TestEBPFUnsupported(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want []string
	}{
		{"defaults", func(*Config) {}, nil},
		{"istio-init args", func(c *Config) {
			c.InboundInterceptionMode, c.OutboundIPRangesInclude, c.InboundPortsInclude = "REDIRECT", "*", "*"
		}, nil},
		{"tproxy", func(c *Config) { c.InboundInterceptionMode = "TPROXY" }, []string{"-m TPROXY (sk_lookup already keeps the client address and original destination)"}},
		{"lowercase tproxy is REDIRECT, as istio", func(c *Config) { c.InboundInterceptionMode = "tproxy" }, nil},
		{"dns and drop-invalid", func(c *Config) { c.CaptureAllDNS, c.DropInvalid = true, true },
			[]string{"DNS capture (--redirect-dns/--capture-all-dns)", "--drop-invalid"}},
		{"owner groups '*' is the default", func(c *Config) { c.OwnerGroupsInclude = "*" }, nil},
		{"owner groups list", func(c *Config) { c.OwnerGroupsInclude = "1337" }, []string{"ISTIO_OUTBOUND_OWNER_GROUPS"}},
		{"interfaces", func(c *Config) { c.KubeVirtInterfaces, c.ExcludeInterfaces = "eth1", "eth2" },
			[]string{"-k/--kube-virt-interfaces", "-c/--istio-exclude-interfaces"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mod(&c)
			if got := c.EBPFUnsupported(); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("EBPFUnsupported() = %q, want %q", got, tc.want)
			}
		})
	}
}
