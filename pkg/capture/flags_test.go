package capture

import (
	"errors"
	"testing"

	"github.com/spf13/pflag"
)

func parse(t *testing.T, env map[string]string, args ...string) Config {
	t.Helper()
	c := Default()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	BindFlagsEnv(fs, &c, MapEnv(env))
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestBindFlagsDefaults(t *testing.T) {
	c := parse(t, nil)
	want := Default()
	if c != want {
		t.Fatalf("no flags, no env: got %+v, want %+v", c, want)
	}
}

func TestBindFlagsShortAndLong(t *testing.T) {
	c := parse(t, nil, "-p", "1", "-z", "2", "-e", "3", "-u", "4", "-g", "5", "-m", "TPROXY", "-t", "6", "-r", "7",
		"-b", "*", "-d", "8,9", "-i", "10.0.0.0/8", "-x", "", "-q", "11", "-o", "12", "-k", "eth1", "-c", "eth2", "-n",
		"--redirect-dns", "--capture-all-dns", "--drop-invalid", "--dual-stack", "--reconcile", "--cleanup-only",
		"--force-apply", "--force-iptables-binary", "nft", "--native-nftables")
	want := Config{ProxyPort: "1", InboundCapturePort: "2", InboundTunnelPort: "3", ProxyUID: "4", ProxyGID: "5",
		InboundInterceptionMode: "TPROXY", InboundTProxyMark: "6", InboundTProxyRouteTable: "7", InboundPortsInclude: "*",
		InboundPortsExclude: "8,9", OutboundIPRangesInclude: "10.0.0.0/8", OutboundPortsInclude: "11", OutboundPortsExclude: "12",
		KubeVirtInterfaces: "eth1", ExcludeInterfaces: "eth2", RedirectDNS: true, CaptureAllDNS: true, DropInvalid: true,
		DualStack: true, OwnerGroupsInclude: "*", HostIPv4LoopbackCIDR: "127.0.0.1/32", DryRun: true, Reconcile: true,
		CleanupOnly: true, ForceApply: true, ForceIptablesBinary: "nft", NativeNftables: true}
	if c != want {
		t.Fatalf("got  %+v\nwant %+v", c, want)
	}
	long := parse(t, nil, "--envoy-port=1", "--inbound-capture-port=2", "--inbound-tunnel-port=3", "--proxy-uid=4",
		"--proxy-gid=5", "--istio-inbound-interception-mode=TPROXY", "--istio-inbound-tproxy-mark=6",
		"--istio-inbound-tproxy-route-table=7", "--istio-inbound-ports=*", "--istio-local-exclude-ports=8,9",
		"--istio-service-cidr=10.0.0.0/8", "--istio-service-exclude-cidr=", "--istio-outbound-ports=11",
		"--istio-local-outbound-ports-exclude=12", "--kube-virt-interfaces=eth1", "--istio-exclude-interfaces=eth2",
		"--dry-run", "--redirect-dns", "--capture-all-dns", "--drop-invalid", "--dual-stack", "--reconcile",
		"--cleanup-only", "--force-apply", "--force-iptables-binary=nft", "--native-nftables")
	if long != want {
		t.Fatalf("long flags: got %+v\nwant %+v", long, want)
	}
}

func TestBindFlagsEnv(t *testing.T) {
	env := map[string]string{
		EnvInboundCapturePort: "2", EnvInboundTunnelPort: "3", EnvProxyUID: "4", EnvProxyGID: "5",
		EnvInterceptionMode: "TPROXY", EnvTProxyMark: "6", EnvTProxyRouteTable: "7", EnvInboundPorts: "*",
		EnvLocalExcludePorts: "8", EnvServiceCIDR: "*", EnvServiceExcludeCIDR: "1.1.0.0/16", EnvOutboundPorts: "11",
		EnvLocalOutboundPortsExcl: "12", EnvKubeVirtInterfaces: "eth1", EnvExcludeInterfaces: "eth2",
		EnvRedirectDNS: "true", EnvCaptureAllDNS: "1", EnvDropInvalid: "true", EnvDualStack: "true", EnvDryRun: "true",
		EnvReconcile: "true", EnvCleanupOnly: "true", EnvForceApply: "true", EnvForceIptablesBinary: "legacy",
		EnvOwnerGroups: "java,202", EnvOwnerGroupsExclude: "888", EnvIPv4LoopbackCIDR: "127.0.0.1/8", EnvEnvoyUser: "envoy",
		EnvNativeNftables: "true",
	}
	c := parse(t, env)
	want := Config{ProxyPort: "15001", InboundCapturePort: "2", InboundTunnelPort: "3", ProxyUID: "4", ProxyGID: "5",
		InboundInterceptionMode: "TPROXY", InboundTProxyMark: "6", InboundTProxyRouteTable: "7", InboundPortsInclude: "*",
		InboundPortsExclude: "8", OutboundIPRangesInclude: "*", OutboundIPRangesExclude: "1.1.0.0/16",
		OutboundPortsInclude: "11", OutboundPortsExclude: "12", KubeVirtInterfaces: "eth1", ExcludeInterfaces: "eth2",
		RedirectDNS: true, CaptureAllDNS: true, DropInvalid: true, DualStack: true, OwnerGroupsInclude: "java,202",
		OwnerGroupsExclude: "888", HostIPv4LoopbackCIDR: "127.0.0.1/8", EnvoyUser: "envoy", DryRun: true, Reconcile: true,
		CleanupOnly: true, ForceApply: true, ForceIptablesBinary: "legacy", NativeNftables: true}
	if c != want {
		t.Fatalf("got  %+v\nwant %+v", c, want)
	}
	// A command-line flag beats the environment.
	c = parse(t, env, "-b", "80", "--redirect-dns=false", "-z", "9", "--native-nftables=false")
	if c.InboundPortsInclude != "80" || c.RedirectDNS || c.InboundCapturePort != "9" || c.NativeNftables {
		t.Fatalf("flags must beat env: %+v", c)
	}
}

func TestBindFlagsExtraEnvOverrides(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want bool
	}{
		{map[string]string{EnvRedirectDNSExtra: "true"}, true},
		{map[string]string{EnvRedirectDNS: "true", EnvRedirectDNSExtra: "false"}, false},
		{map[string]string{EnvRedirectDNS: "false", EnvRedirectDNSExtra: "true"}, true},
		{map[string]string{EnvRedirectDNS: "true", EnvRedirectDNSExtra: "junk"}, true}, // unparsable: ignored
	} {
		if c := parse(t, tc.env); c.RedirectDNS != tc.want {
			t.Errorf("env %v: RedirectDNS=%v, want %v", tc.env, c.RedirectDNS, tc.want)
		}
	}
	if c := parse(t, map[string]string{EnvDropInvalidExtra: "true"}); !c.DropInvalid {
		t.Error("INVALID_DROP must enable drop-invalid")
	}
	if c := parse(t, map[string]string{EnvDualStackExtra: "true"}); !c.DualStack {
		t.Error("ISTIO_DUAL_STACK must enable dual-stack")
	}
	// Env-only: an empty owner-groups include is kept (it means "capture no group").
	if c := parse(t, map[string]string{EnvOwnerGroups: ""}); c.OwnerGroupsInclude != "" {
		t.Errorf("empty ISTIO_OUTBOUND_OWNER_GROUPS: got %q", c.OwnerGroupsInclude)
	}
}

func TestBindCaptureFlagsOnly(t *testing.T) {
	c := Default()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	BindCaptureFlags(fs, &c, MapEnv(map[string]string{EnvDryRun: "true", EnvReconcile: "true"}))
	for _, name := range []string{"dry-run", "reconcile", "cleanup-only", "force-apply", "force-iptables-binary", "native-nftables"} {
		if fs.Lookup(name) != nil {
			t.Errorf("capture subset registers apply flag --%s", name)
		}
	}
	if fs.Lookup("istio-inbound-ports") == nil || fs.ShorthandLookup("b") == nil {
		t.Error("capture subset misses -b")
	}
	if c.DryRun || c.Reconcile {
		t.Error("capture subset read apply env vars")
	}
}

func TestExecFlagsAccepted(t *testing.T) {
	c := Default()
	var ex ExecOptions
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	BindFlagsEnv(fs, &c, MapEnv(nil))
	BindExecFlags(fs, &ex, MapEnv(nil))
	if err := fs.Parse([]string{"--log_output_level=default:info", "--skip-rule-apply", "--probe-timeout=3s", "--cni-mode"}); err != nil {
		t.Fatal(err)
	}
	if !ex.SkipRuleApply || ex.LogOutputLevel != "default:info" || ex.ProbeTimeout != "3s" || !ex.CNIMode {
		t.Fatalf("%+v", ex)
	}
}

func TestResolveDefaults(t *testing.T) {
	none := func(string) (string, error) { return "", errors.New("unknown user") }
	c := Default()
	c.ResolveDefaultsWith(none)
	if c.ProxyUID != "1337" || c.ProxyGID != "1337" {
		t.Fatalf("no user: %q/%q", c.ProxyUID, c.ProxyGID)
	}
	var asked string
	c = Default()
	c.EnvoyUser = "envoy"
	c.ResolveDefaultsWith(func(n string) (string, error) { asked = n; return "101", nil })
	if asked != "envoy" || c.ProxyUID != "101" || c.ProxyGID != "101" {
		t.Fatalf("user envoy: asked %q, got %q/%q", asked, c.ProxyUID, c.ProxyGID)
	}
	c = Default()
	c.ResolveDefaultsWith(func(n string) (string, error) { asked = n; return "7", nil })
	if asked != "istio-proxy" || c.ProxyUID != "7" {
		t.Fatalf("default user name: asked %q, got %q", asked, c.ProxyUID)
	}
	c = Default()
	c.ProxyUID, c.ProxyGID = "3,4", ""
	c.ResolveDefaultsWith(none)
	if c.ProxyUID != "3,4" || c.ProxyGID != "3,4" {
		t.Fatalf("explicit uid list: %q/%q", c.ProxyUID, c.ProxyGID)
	}
	c = Default()
	c.ProxyGID = "9"
	c.ResolveDefaultsWith(none)
	if c.ProxyUID != "1337" || c.ProxyGID != "9" {
		t.Fatalf("explicit gid: %q/%q", c.ProxyUID, c.ProxyGID)
	}
}
