package capture

import (
	"fmt"
	"strconv"
)

// EBPFUnsupported names, for a pod with host facts h, every requested setting and every pod fact that eBPF capture
// cannot express yet, so that eBPF mode never captures less than istio's rules would. Each entry names the flag,
// variable or fact. Callers refuse eBPF capture when the list is not empty: `meshcap ebpf attach` and
// `meshcap init --mode ebpf` fail, `meshcap init --mode auto` falls back to the iptables mode, and meshcap-cni
// applies istio's rules in the pod's netns instead of enrolling it into eBPF capture (docs/ipv6-dns.md).
//
// The list follows istio's rules (istio-golden/DEFAULTS.md):
//   - IPv6: istio writes ip6tables rules when it detects IPv6 (h.IPv6, see DetectIPv6 and --dual-stack). The
//     programs capture native IPv6 when Policy.IPv6 is set (loader tests), but no entry point sets it from the
//     pod's facts yet, so such a pod is still refused rather than have its IPv6 connections bypass the sidecar.
//     IPv4-mapped destinations are IPv4 and captured in every pod (connect6).
//   - DNS: --redirect-dns (REDIRECT_DNS, ISTIO_META_DNS_CAPTURE). Refused whenever it is on, even where istio would
//     find no resolv.conf server and capture nothing: the deciding process does not always see the pod's
//     resolv.conf, and the iptables fallback then does exactly what istio does. --capture-all-dns alone changes
//     nothing in istio, so it is accepted.
//   - Owner group lists (ISTIO_OUTBOUND_OWNER_GROUPS other than "*" and "", ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE,
//     which istio uses only when the include value is "*"). istio's "-m owner --gid-owner G" matches the socket
//     owner's primary gid only (no --suppl-groups), which a connect program sees too, but G may be a group name
//     that iptables resolves in the /etc/group of the process applying the rules; the programs hold no group list
//     yet. The empty value (istio: a bare RETURN, no outbound TCP redirected) is expressed: Policy.OutboundNone.
//   - -k, -c, -m TPROXY, --drop-invalid: rules on interfaces, marks and conntrack state with no eBPF counterpart.
//   - More than MaxIDs -u or -g values: the BPF programs hold a fixed-size list of exempt ids (ebpf_limits.go).
func (c Config) EBPFUnsupported(h HostFacts) []string {
	var out []string
	for _, s := range []struct {
		on   bool
		what string
	}{
		{h.IPv6, "IPv6 capture (the pod has IPv6 addresses, so istio also writes ip6tables rules; see --dual-stack)"},
		{c.RedirectDNS, "DNS capture (--redirect-dns / ISTIO_META_DNS_CAPTURE)"},
		{c.OwnerGroupsInclude != "*" && c.OwnerGroupsInclude != "", EnvOwnerGroups + "=" + strconv.Quote(c.OwnerGroupsInclude) + " (group lists)"},
		{c.OwnerGroupsInclude == "*" && c.OwnerGroupsExclude != "", EnvOwnerGroupsExclude + "=" + strconv.Quote(c.OwnerGroupsExclude)},
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
