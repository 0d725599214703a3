// Package capture holds the one capture configuration shared by both backends.
//
// Invariants:
//   - Config keeps every istio-iptables setting as the raw text the user gave (flag or environment variable),
//     because the iptables backend must copy lists verbatim to be byte-exact with istio-iptables.
//   - Policy is the typed, validated view of the same Config. The eBPF backend consumes only Policy; the
//     iptables backend validates through Policy too, so a value rejected for one mode is rejected for both.
//   - Nothing in this package changes the system. HostSource only reads it (interface addresses of the current
//     network namespace, /etc/resolv.conf), and every decision taking host facts takes them as a HostFacts value.
//   - EBPFUnsupported is the one list of what eBPF capture cannot do yet; every eBPF entry point (ebpf attach,
//     init, the agent's CNI plugin) refuses or falls back on it, so no setting is accepted and silently not done.
//   - Policy.ForPod is the one place where a pod's host facts enter the eBPF policy (IPv6 capture exactly where
//     istio would write ip6tables rules), with the same HostFacts the iptables backend builds its rules from.
package capture

// Config is the istio-iptables configuration, field for field. Lists are comma-separated raw strings.
type Config struct {
	ProxyPort               string // -p  --envoy-port (default 15001)
	InboundCapturePort      string // -z  --inbound-capture-port (default 15006)
	InboundTunnelPort       string // -e  --inbound-tunnel-port (default 15008)
	ProxyUID                string // -u  --proxy-uid (comma list; empty -> istio-proxy user or 1337)
	ProxyGID                string // -g  --proxy-gid (comma list; empty -> same as final proxy UID)
	InboundInterceptionMode string // -m  (only "TPROXY" changes anything)
	InboundTProxyMark       string // -t  (default 1337)
	InboundTProxyRouteTable string // -r  (default 133)
	InboundPortsInclude     string // -b  ("*" or list; empty = no inbound capture)
	InboundPortsExclude     string // -d  (used only when -b is "*")
	OutboundIPRangesInclude string // -i  ("*" or CIDR list; empty = no outbound redirect)
	OutboundIPRangesExclude string // -x  (CIDR list; "*" is an error)
	OutboundPortsInclude    string // -q
	OutboundPortsExclude    string // -o  (tcp and udp)
	KubeVirtInterfaces      string // -k
	ExcludeInterfaces       string // -c
	RedirectDNS             bool   // --redirect-dns
	CaptureAllDNS           bool   // --capture-all-dns
	DropInvalid             bool   // --drop-invalid
	DualStack               bool   // --dual-stack
	OwnerGroupsInclude      string // ISTIO_OUTBOUND_OWNER_GROUPS (default "*")
	OwnerGroupsExclude      string // ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE
	HostIPv4LoopbackCIDR    string // ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR (default 127.0.0.1/32)
	EnvoyUser               string // ENVOY_USER: user looked up by ResolveDefaults when ProxyUID is empty ("" = istio-proxy)

	// Apply-flow settings (iptables and nftables modes).
	DryRun              bool   // -n --dry-run
	Reconcile           bool   // --reconcile
	CleanupOnly         bool   // --cleanup-only
	ForceApply          bool   // --force-apply
	ForceIptablesBinary string // --force-iptables-binary: "", "legacy" or "nft"
	NativeNftables      bool   // --native-nftables: write istio's inet nftables tables instead of iptables rules
}

// Default returns istio-iptables' defaults (DEFAULTS.md section 2).
func Default() Config {
	return Config{
		ProxyPort:               "15001",
		InboundCapturePort:      "15006",
		InboundTunnelPort:       "15008",
		InboundTProxyMark:       "1337",
		InboundTProxyRouteTable: "133",
		OwnerGroupsInclude:      "*",
		HostIPv4LoopbackCIDR:    "127.0.0.1/32",
	}
}
