package capture

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Policy is the typed view of a Config: what the eBPF backend programs into its maps, and what both backends
// validate against. Every list keeps the user's order.
type Policy struct {
	ProxyPort          uint16 // outbound listener (-p)
	InboundCapturePort uint16 // inbound listener (-z)
	InboundTunnelPort  uint16 // never captured inbound (-e)

	ProxyUIDs []uint32 // exempt owners (-u)
	ProxyGIDs []uint32 // exempt groups (-g)

	InboundAll          bool     // -b '*': every port except InboundExcludePorts and the tunnel port
	InboundPorts        []uint16 // -b list (when not InboundAll)
	InboundExcludePorts []uint16 // -d (meaningful only with InboundAll, as istio)

	OutboundAll          bool           // -i '*'
	OutboundIncludeCIDRs []netip.Prefix // -i list, host bits kept as given
	OutboundExcludeCIDRs []netip.Prefix // -x
	OutboundIncludePorts []uint16       // -q: captured even outside -i
	OutboundExcludePorts []uint16       // -o: never captured

	LoopbackV4 netip.Prefix // ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR

	// OutboundNone is ISTIO_OUTBOUND_OWNER_GROUPS="": istio's rule 13 is then a bare RETURN after the owner rules,
	// so nothing that reaches it is redirected (-q and -i have no effect); the lo rules before it still apply.
	OutboundNone bool
	// OwnerGroups is rule 13 with a group list, names resolved to gids (Config.ResolveOwnerGroups): the caller that
	// decides for the pod sets it (Config.PodPolicy), since names resolve in the /etc/group that caller sees.
	OwnerGroups OwnerGroups

	// LocalAddrs are the addresses of the pod's network namespace (HostFacts.LocalAddrs): the kernel routes a
	// connection to one of them over lo, where istio's "-o lo" rules match it. Not a flag: the caller that reads
	// the pod's netns sets it (ForPod). nil means unknown: the addresses written before stay.
	LocalAddrs []netip.Addr

	// IPv6 is istio's "IPv6 enabled" for the pod (HostFacts.IPv6, from its addresses and --dual-stack): native
	// IPv6 is captured with the IPv6 lists only then, as istio writes ip6tables rules only then. Not a flag: the
	// caller that knows the pod's facts sets it.
	IPv6 bool

	// DNS is istio's DNS capture of the pod (Config.DNSPolicy: --redirect-dns, --capture-all-dns and the pod's
	// resolv.conf). Not flags alone: the caller that knows the pod's facts sets it. Zero value: no DNS capture.
	DNS DNSPolicy
}

// DNSPolicy is istio's ISTIO_OUTPUT_DNS: UDP and TCP to port 53 of Servers (of every destination with All) go to
// 127.0.0.1:Port ([::1]:Port for IPv6 servers, only when Policy.IPv6), after the -o and owner exemptions.
type DNSPolicy struct {
	Port    uint16       // the agent's DNS port (AgentDNSPort); 0 = no DNS capture
	All     bool         // --capture-all-dns
	Servers []netip.Addr // resolv.conf nameservers, canonical; an IPv4-mapped one is IPv6 (as istio: it never matches)
}

// InboundEnabled reports whether any inbound port is captured (-b non-empty).
func (p Policy) InboundEnabled() bool { return p.InboundAll || len(p.InboundPorts) > 0 }

// Policy parses and validates c. The error names the flag and the bad value.
func (c Config) Policy() (Policy, error) {
	var p Policy
	var err error
	if p.ProxyPort, err = parsePort("-p/--envoy-port", c.ProxyPort); err != nil {
		return p, err
	}
	if p.InboundCapturePort, err = parsePort("-z/--inbound-capture-port", c.InboundCapturePort); err != nil {
		return p, err
	}
	if p.InboundTunnelPort, err = parsePort("-e/--inbound-tunnel-port", c.InboundTunnelPort); err != nil {
		return p, err
	}
	if p.ProxyUIDs, err = parseIDs("-u/--proxy-uid", c.ProxyUID); err != nil {
		return p, err
	}
	if p.ProxyGIDs, err = parseIDs("-g/--proxy-gid", c.ProxyGID); err != nil {
		return p, err
	}
	if c.InboundPortsInclude == "*" {
		p.InboundAll = true
	} else if p.InboundPorts, err = parsePorts("-b/--istio-inbound-ports", c.InboundPortsInclude); err != nil {
		return p, err
	}
	if p.InboundExcludePorts, err = parsePorts("-d/--istio-local-exclude-ports", c.InboundPortsExclude); err != nil {
		return p, err
	}
	if c.OutboundIPRangesInclude == "*" {
		p.OutboundAll = true
	} else if p.OutboundIncludeCIDRs, err = parseCIDRs("-i/--istio-service-cidr", c.OutboundIPRangesInclude); err != nil {
		return p, err
	}
	if c.OutboundIPRangesExclude == "*" {
		return p, fmt.Errorf("invalid value for -x/--istio-service-exclude-cidr %q: '*' is not allowed", c.OutboundIPRangesExclude)
	}
	if p.OutboundExcludeCIDRs, err = parseCIDRs("-x/--istio-service-exclude-cidr", c.OutboundIPRangesExclude); err != nil {
		return p, err
	}
	if p.OutboundIncludePorts, err = parsePorts("-q/--istio-outbound-ports", c.OutboundPortsInclude); err != nil {
		return p, err
	}
	if p.OutboundExcludePorts, err = parsePorts("-o/--istio-local-outbound-ports-exclude", c.OutboundPortsExclude); err != nil {
		return p, err
	}
	if p.LoopbackV4, err = parseLoopback(c.HostIPv4LoopbackCIDR); err != nil {
		return p, err
	}
	p.OutboundNone = c.OwnerGroupsInclude == ""
	if n := len(SplitList(c.OwnerGroupsInclude)); c.OwnerGroupsInclude != "*" && n > MaxOwnerGroups {
		return p, fmt.Errorf("invalid %s %q: at most %d groups", EnvOwnerGroups, c.OwnerGroupsInclude, MaxOwnerGroups)
	}
	return p, nil
}

// SplitList splits a comma list as istio does: empty items are dropped, items are not trimmed.
func SplitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item != "" {
			out = append(out, item)
		}
	}
	return out
}

func parsePort(flag, s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 || n > 65535 {
		return 0, fmt.Errorf("invalid port %q for %s: want a number from 1 to 65535", s, flag)
	}
	return uint16(n), nil
}

func parsePorts(flag, s string) ([]uint16, error) {
	var out []uint16
	for _, item := range SplitList(s) {
		p, err := parsePort(flag, item)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func parseIDs(flag, s string) ([]uint32, error) {
	var out []uint32
	for _, item := range SplitList(s) {
		n, err := strconv.ParseUint(item, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("invalid id %q for %s: want a numeric uid/gid", item, flag)
		}
		out = append(out, uint32(n))
	}
	return out, nil
}

func parseCIDRs(flag, s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, item := range SplitList(s) {
		p, err := netip.ParsePrefix(item)
		if err != nil {
			return nil, fmt.Errorf("invalid CIDR %q for %s: %w", item, flag, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func parseLoopback(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() || !p.Addr().IsLoopback() || p.Bits() < 8 {
		return netip.Prefix{}, fmt.Errorf("invalid ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR %q: want an IPv4 loopback CIDR with a mask of 8 to 32", s)
	}
	return p, nil
}
