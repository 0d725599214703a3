package capture

import "fmt"

// EBPFUnsupported names, for a pod with host facts h, every requested setting and every pod fact that eBPF capture
// cannot express yet, so that eBPF mode never captures less than istio's rules would. Each entry names the flag,
// variable or fact. Callers refuse eBPF capture when the list is not empty: `meshcap ebpf attach` and
// `meshcap init --mode ebpf` fail, `meshcap init --mode auto` falls back to the iptables mode, and meshcap-cni
// applies istio's rules in the pod's netns instead of enrolling it into eBPF capture (docs/ipv6-dns.md).
//
// The list follows istio's rules (istio-golden/DEFAULTS.md). IPv6 is not in it: eBPF capture follows the pod's
// IPv6 fact through Policy.ForPod, as istio's ip6tables rules do. DNS (--redirect-dns, --capture-all-dns) is not
// either: the programs capture it (Policy.DNS, bpf/include/dns.h), from the same resolv.conf servers the iptables
// mode reads (HostFacts), IPv6 servers where Policy.IPv6 is set. Owner groups are not either: the empty
// ISTIO_OUTBOUND_OWNER_GROUPS is Policy.OutboundNone, a list (or the exclude list beside "*") is Policy.OwnerGroups,
// resolved to gids by PodPolicy ("-m owner --gid-owner" compares the socket owner's primary gid, which a connect
// program sees too). The rest:
//   - -k, -c, -m TPROXY, --drop-invalid: rules on interfaces, marks and conntrack state with no eBPF counterpart.
//   - More than MaxIDs -u or -g values: the BPF programs hold a fixed-size list of exempt ids (ebpf_limits.go).
func (c Config) EBPFUnsupported(h HostFacts) []string {
	var out []string
	for _, s := range []struct {
		on   bool
		what string
	}{
		{c.KubeVirtInterfaces != "", "-k/--kube-virt-interfaces"},
		{c.ExcludeInterfaces != "", "-c/--istio-exclude-interfaces"},
		{c.InboundInterceptionMode == "TPROXY", "-m TPROXY (sk_lookup already keeps the client address and original destination)"},
		{c.DropInvalid, "--drop-invalid"},
		{len(SplitList(c.ProxyUID)) > MaxIDs, fmt.Sprintf("more than %d -u/--proxy-uid values", MaxIDs)},
		{len(SplitList(c.ProxyGID)) > MaxIDs, fmt.Sprintf("more than %d -g/--proxy-gid values", MaxIDs)},
	} {
		if s.on {
			out = append(out, s.what)
		}
	}
	return out
}

// ForPod completes p with the facts of the pod it captures (the HostFacts the iptables backend builds its rules
// from: one detection for both modes). IPv6: native IPv6 is captured, outbound and inbound, exactly when istio
// would write its ip6tables rules (h.IPv6: the pod's addresses and --dual-stack, DetectIPv6); otherwise it is left
// alone, as istio leaves it without ip6tables rules. IPv4-mapped destinations are IPv4 and captured either way.
//
// LocalAddrs: the pod's own addresses, which the programs need for istio's "-o lo" rules (a connect program sees
// the destination address, not the route): nil when unknown, and the addresses written before stay.
func (p Policy) ForPod(h HostFacts) Policy {
	p.IPv6 = h.IPv6
	p.LocalAddrs = h.LocalAddrs
	return p
}

// PodPolicy completes p, c's policy, with the facts h of the pod it captures: IPv6 and addresses (ForPod), DNS capture
// (DNSPolicy: --redirect-dns, --capture-all-dns and the resolv.conf servers in h) and the owner groups as gids
// (ResolveOwnerGroups with lookup, usually OSGroupLookup: the /etc/group of the deciding process, where iptables
// would resolve them). Every eBPF front end (ebpf attach, init, meshcap-cni and the agent's re-enrollment) builds the
// pod's policy here, from the facts the iptables mode would build its rules from. The error names an unknown group.
func (c Config) PodPolicy(p Policy, h HostFacts, lookup GroupLookup) (Policy, error) {
	p = p.ForPod(h)
	p.DNS = c.DNSPolicy(h)
	var err error
	p.OwnerGroups, err = c.ResolveOwnerGroups(lookup)
	return p, err
}
