package capture

import "fmt"

// EBPFUnsupported names the requested settings that eBPF capture does not implement. They are accepted by every
// command so that istio-init argument lists work unchanged: `meshcap ebpf attach` warns about them, and
// `meshcap init --mode auto` falls back to the iptables mode when any is requested.
func (c Config) EBPFUnsupported() []string {
	var out []string
	for _, s := range []struct {
		on   bool
		what string
	}{
		{c.KubeVirtInterfaces != "", "-k/--kube-virt-interfaces"},
		{c.ExcludeInterfaces != "", "-c/--istio-exclude-interfaces"},
		{c.RedirectDNS || c.CaptureAllDNS, "DNS capture (--redirect-dns/--capture-all-dns)"},
		{c.InboundInterceptionMode == "TPROXY", "-m TPROXY (sk_lookup already keeps the client address and original destination)"},
		{c.DropInvalid, "--drop-invalid"},
		{c.OwnerGroupsInclude != "" && c.OwnerGroupsInclude != "*", "ISTIO_OUTBOUND_OWNER_GROUPS"},
		{c.OwnerGroupsExclude != "", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"},
		{len(SplitList(c.ProxyUID)) > MaxIDs, fmt.Sprintf("more than %d -u/--proxy-uid values", MaxIDs)},
		{len(SplitList(c.ProxyGID)) > MaxIDs, fmt.Sprintf("more than %d -g/--proxy-gid values", MaxIDs)},
	} {
		if s.on {
			out = append(out, s.what)
		}
	}
	return out
}
