// Package iptables is meshcap's istio-iptables-compatible fallback: a pure rule builder (Build) whose
// iptables-restore payloads are byte-identical to `pilot-agent istio-iptables` (DEFAULTS.md sections 3 and 5 in
// testdata/istio-golden), small host-fact helpers (IPv6 detection, resolv.conf), and the apply flow (Applier) that
// runs iptables-restore the way istio does (section 7).
//
// Invariants:
//   - Build touches nothing on the host: host facts are passed in.
//   - Every value is validated before a single command runs; errors name the bad value.
//   - Lists are copied verbatim (no trimming, no de-duplication, no sorting) except CIDRs and DNS servers, which are
//     canonicalised as istio does.
package iptables

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/meshcap/meshcap/pkg/capture"
)

// Fixed istio constants (DEFAULTS.md section 2).
const (
	ChainInbound     = "ISTIO_INBOUND"
	ChainRedirect    = "ISTIO_REDIRECT"
	ChainInRedirect  = "ISTIO_IN_REDIRECT"
	ChainOutput      = "ISTIO_OUTPUT"
	ChainOutputDNS   = "ISTIO_OUTPUT_DNS"
	ChainDivert      = "ISTIO_DIVERT"
	ChainTProxy      = "ISTIO_TPROXY"
	ChainDrop        = "ISTIO_DROP"
	agentDNSPort     = "15053"
	dnsPort          = "53"
	outboundMark     = "1338"
	tproxyMaskSuffix = "/0xffffffff"
	srcV4            = "127.0.0.6/32"
	srcV6            = "::6/128"
	loV6             = "::1/128"
)

// Tables in payload order (alphabetical).
var tableOrder = []string{"filter", "mangle", "nat", "raw"}

var builtinChains = map[string]bool{
	"INPUT": true, "OUTPUT": true, "FORWARD": true, "PREROUTING": true, "POSTROUTING": true,
	"ACCEPT": true, "RETURN": true, "DROP": true,
}

// IsBuiltinChain reports whether name is a built-in chain or target (no -N needed).
func IsBuiltinChain(name string) bool { return builtinChains[name] }

// Rule is one generated rule: `-A Chain Spec...` or, when Pos > 0, `-I Chain Pos Spec...`.
type Rule struct {
	Table string
	Chain string
	Pos   int
	Spec  []string
}

// Command returns the rule in iptables-restore form, e.g. "-A ISTIO_OUTPUT -j ISTIO_REDIRECT".
func (r Rule) Command() string {
	w := []string{"-A", r.Chain}
	if r.Pos > 0 {
		w = []string{"-I", r.Chain, strconv.Itoa(r.Pos)}
	}
	return strings.Join(append(w, r.Spec...), " ")
}

// CheckArgs returns the arguments of `iptables -t T -C CHAIN SPEC` for this rule (insert position removed).
func (r Rule) CheckArgs() []string {
	return append([]string{"-t", r.Table, "-C", r.Chain}, r.Spec...)
}

// DeleteArgs returns the arguments of `iptables -t T -D CHAIN SPEC`.
func (r Rule) DeleteArgs() []string {
	return append([]string{"-t", r.Table, "-D", r.Chain}, r.Spec...)
}

// Ruleset is the output of Build: the rules of each family in generation order.
type Ruleset struct {
	V4   []Rule
	V6   []Rule
	IPv6 bool // the IPv6 family is in use (V6 is empty otherwise)
	// TPROXY routing, applied outside iptables when TPROXY mode has inbound ports.
	TProxyRoute *TProxyRoute
}

// TProxyRoute is the `ip rule add fwmark Mark lookup Table` + `ip route add local default dev lo table Table` pair.
type TProxyRoute struct {
	Mark  string
	Table string
}

// Rules returns the rules of one family.
func (rs *Ruleset) Rules(v6 bool) []Rule {
	if v6 {
		return rs.V6
	}
	return rs.V4
}

// Payload returns the iptables-restore --noflush input for one family ("" for IPv6 when IPv6 is off).
func (rs *Ruleset) Payload(v6 bool) string {
	if v6 && !rs.IPv6 {
		return ""
	}
	return restorePayload(rs.Rules(v6))
}

// DryRunStream returns what istio-iptables' recording stub writes in dry-run mode (the .golden format): the state
// check saves, the payload lines, and the final saves, each line followed by "\n".
func (rs *Ruleset) DryRunStream() string {
	var b strings.Builder
	b.WriteString("iptables-save\nip6tables-save\n")
	b.WriteString(rs.Payload(false))
	b.WriteString(rs.Payload(true))
	b.WriteString("iptables-save\n")
	if rs.IPv6 {
		b.WriteString("ip6tables-save\n")
	}
	return b.String()
}

// Chains returns the custom chains each table of the family uses, table -> chains in -N order.
func (rs *Ruleset) Chains(v6 bool) map[string][]string {
	out := map[string][]string{}
	for t, chains := range chainsByTable(rs.Rules(v6)) {
		out[t] = chains
	}
	return out
}

func chainsByTable(rules []Rule) map[string][]string {
	out := map[string][]string{}
	seen := map[[2]string]bool{}
	hasRules := map[[2]string]bool{}
	for _, r := range rules {
		hasRules[[2]string{r.Table, r.Chain}] = true
	}
	add := func(table, chain string) {
		k := [2]string{table, chain}
		if builtinChains[chain] || seen[k] {
			return
		}
		seen[k] = true
		out[table] = append(out[table], chain)
	}
	for _, r := range rules { // pass 1: chains with rules, in generation order
		add(r.Table, r.Chain)
	}
	for _, r := range rules { // pass 2: jump targets without rules of their own
		n := len(r.Spec)
		if n >= 2 && r.Spec[n-2] == "-j" && !hasRules[[2]string{r.Table, r.Spec[n-1]}] {
			add(r.Table, r.Spec[n-1])
		}
	}
	return out
}

func restorePayload(rules []Rule) string {
	chains := chainsByTable(rules)
	var b strings.Builder
	for _, t := range tableOrder {
		var lines []string
		for _, r := range rules {
			if r.Table == t {
				lines = append(lines, r.Command())
			}
		}
		if len(lines) == 0 && len(chains[t]) == 0 {
			continue
		}
		b.WriteString("* " + t + "\n")
		for _, c := range chains[t] {
			b.WriteString("-N " + c + "\n")
		}
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// Validate checks every value of c that reaches a rule or the apply flow, before anything is applied.
// c must have gone through ResolveDefaults (or carry explicit -u/-g). The error names the bad value.
func Validate(c capture.Config) (capture.Policy, error) {
	p, err := c.Policy()
	if err != nil {
		return p, err
	}
	if _, err := parseUint32("-t/--istio-inbound-tproxy-mark", c.InboundTProxyMark); err != nil {
		return p, err
	}
	if _, err := parseUint32("-r/--istio-inbound-tproxy-route-table", c.InboundTProxyRouteTable); err != nil {
		return p, err
	}
	for _, f := range []struct{ flag, val string }{
		{"-k/--kube-virt-interfaces", c.KubeVirtInterfaces},
		{"-c/--istio-exclude-interfaces", c.ExcludeInterfaces},
	} {
		for _, name := range capture.SplitList(f.val) {
			if err := checkIfName(f.flag, name); err != nil {
				return p, err
			}
		}
	}
	if c.OwnerGroupsInclude != "*" {
		for _, g := range capture.SplitList(c.OwnerGroupsInclude) {
			if err := checkWord(capture.EnvOwnerGroups, g); err != nil {
				return p, err
			}
		}
	}
	for _, g := range capture.SplitList(c.OwnerGroupsExclude) {
		if err := checkWord(capture.EnvOwnerGroupsExclude, g); err != nil {
			return p, err
		}
	}
	if err := c.ValidateForceIptablesBinary(); err != nil {
		return p, err
	}
	return p, nil
}

func parseUint32(flag, s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid value %q for %s: want a number from 0 to 4294967295", s, flag)
	}
	return uint32(n), nil
}

// checkIfName rejects interface names iptables would reject or that would change the meaning of a rule line.
func checkIfName(flag, name string) error {
	if len(name) > 15 || strings.ContainsAny(name, " \t\n\r/\"'") {
		return fmt.Errorf("invalid interface name %q for %s", name, flag)
	}
	return nil
}

func checkWord(what, s string) error {
	if strings.ContainsAny(s, " \t\n\r\"'") {
		return fmt.Errorf("invalid group %q in %s", s, what)
	}
	return nil
}

// SplitCIDRs splits a validated CIDR list into canonical IPv4 and IPv6 text (host bits kept, IPv4-mapped = IPv6).
func SplitCIDRs(list string) (v4, v6 []string, loopback bool) {
	for _, item := range capture.SplitList(list) {
		p, err := netip.ParsePrefix(item)
		if err != nil {
			continue // Validate already rejected it
		}
		if p.Addr().IsLoopback() {
			loopback = true
		}
		if p.Addr().Is4() {
			v4 = append(v4, p.String())
		} else {
			v6 = append(v6, p.String())
		}
	}
	return v4, v6, loopback
}

// builder accumulates the rules of both families in generation order.
type builder struct {
	ipv6   bool
	v4, v6 []Rule
}

func (b *builder) add(v6 bool, table, chain string, pos int, spec ...string) {
	r := Rule{Table: table, Chain: chain, Pos: pos, Spec: spec}
	if v6 {
		b.v6 = append(b.v6, r)
	} else {
		b.v4 = append(b.v4, r)
	}
}

// both adds to IPv4 and, when IPv6 is on, to IPv6.
func (b *builder) both(table, chain string, spec ...string) {
	b.add(false, table, chain, 0, spec...)
	if b.ipv6 {
		b.add(true, table, chain, 0, spec...)
	}
}

func (b *builder) bothInsert(table, chain string, pos int, spec ...string) {
	b.add(false, table, chain, pos, spec...)
	if b.ipv6 {
		b.add(true, table, chain, pos, spec...)
	}
}

// fam calls fn for IPv4 and, when IPv6 is on, for IPv6, with the family's loopback CIDR and passthrough source.
func (b *builder) fam(loV4 string, fn func(v6 bool, lo, src string)) {
	fn(false, loV4, srcV4)
	if b.ipv6 {
		fn(true, loV6, srcV6)
	}
}

// Build validates c and generates the rules of istio-iptables for the given host facts (DEFAULTS.md section 5).
// c must have gone through ResolveDefaults (or carry explicit -u/-g).
func Build(c capture.Config, host capture.HostFacts) (*Ruleset, error) {
	if _, err := Validate(c); err != nil {
		return nil, err
	}
	b := &builder{ipv6: host.IPv6}
	tproxy := c.InboundInterceptionMode == "TPROXY"
	tunnel := c.InboundTunnelPort
	mark := c.InboundTProxyMark
	loV4 := c.HostIPv4LoopbackCIDR
	uids := capture.SplitList(c.ProxyUID)
	gids := capture.SplitList(c.ProxyGID)
	excludeIfs := capture.SplitList(c.ExcludeInterfaces)
	virtIfs := capture.SplitList(c.KubeVirtInterfaces)

	incAll := c.OutboundIPRangesInclude == "*"
	var inc4, inc6 []string
	var incLoopback bool
	if !incAll {
		inc4, inc6, incLoopback = SplitCIDRs(c.OutboundIPRangesInclude)
	}
	exc4, exc6, _ := SplitCIDRs(c.OutboundIPRangesExclude)

	captureAll := c.CaptureAllDNS
	var dns4, dns6 []string
	if c.RedirectDNS && !captureAll {
		dns4, dns6 = host.DNSServersV4, host.DNSServersV6
	}
	dns := c.DNSCapture(host)

	// 1. excluded interfaces
	for _, i := range excludeIfs {
		b.both("nat", "PREROUTING", "-i", i, "-j", "RETURN")
		b.both("nat", "OUTPUT", "-o", i, "-j", "RETURN")
	}
	if tproxy {
		for _, i := range excludeIfs {
			b.both("mangle", "PREROUTING", "-i", i, "-j", "RETURN")
			b.both("mangle", "OUTPUT", "-o", i, "-j", "RETURN")
		}
	}
	// 2. virtual interfaces
	for _, k := range virtIfs {
		b.bothInsert("nat", "PREROUTING", 1, "-i", k, "-j", "RETURN")
	}
	// 3. drop invalid
	if c.DropInvalid {
		b.both("mangle", "PREROUTING", "-m", "conntrack", "--ctstate", "INVALID", "-j", ChainDrop)
		b.both("mangle", ChainDrop, "-j", "DROP")
	}
	// 4-6.
	b.both("nat", ChainInbound, "-p", "tcp", "--dport", tunnel, "-j", "RETURN")
	b.both("nat", ChainRedirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports", c.ProxyPort)
	b.both("nat", ChainInRedirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports", c.InboundCapturePort)
	// 7. inbound
	if c.InboundPortsInclude != "" {
		tbl := "nat"
		if tproxy {
			tbl = "mangle"
			b.both("mangle", ChainDivert, "-j", "MARK", "--set-mark", mark)
			b.both("mangle", ChainDivert, "-j", "ACCEPT")
			b.fam(loV4, func(v6 bool, lo, _ string) {
				b.add(v6, "mangle", ChainTProxy, 0, "!", "-d", lo, "-p", "tcp", "-j", "TPROXY",
					"--tproxy-mark", mark+tproxyMaskSuffix, "--on-port", c.InboundCapturePort)
			})
		}
		b.both(tbl, "PREROUTING", "-p", "tcp", "-j", ChainInbound)
		if c.InboundPortsInclude == "*" {
			for _, p := range capture.SplitList(c.InboundPortsExclude) {
				b.both(tbl, ChainInbound, "-p", "tcp", "--dport", p, "-j", "RETURN")
			}
			if tproxy {
				b.both("mangle", ChainInbound, "-p", "tcp", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", ChainDivert)
				b.both("mangle", ChainInbound, "-p", "tcp", "-j", ChainTProxy)
			} else {
				b.both("nat", ChainInbound, "-p", "tcp", "-j", ChainInRedirect)
			}
		} else {
			for _, p := range capture.SplitList(c.InboundPortsInclude) {
				if tproxy {
					b.both("mangle", ChainInbound, "-p", "tcp", "--dport", p, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", ChainDivert)
					b.both("mangle", ChainInbound, "-p", "tcp", "--dport", p, "-j", ChainTProxy)
				} else {
					b.both("nat", ChainInbound, "-p", "tcp", "--dport", p, "-j", ChainInRedirect)
				}
			}
		}
	}
	// 8.
	b.both("nat", "OUTPUT", "-j", ChainOutput)
	// 9.
	for _, p := range capture.SplitList(c.OutboundPortsExclude) {
		b.both("nat", ChainOutput, "-p", "tcp", "--dport", p, "-j", "RETURN")
		b.both("nat", ChainOutput, "-p", "udp", "--dport", p, "-j", "RETURN")
	}
	// 10.
	b.fam(loV4, func(v6 bool, _, src string) {
		b.add(v6, "nat", ChainOutput, 0, "-o", "lo", "-s", src, "-j", "RETURN")
	})
	// 11-12. owners
	owner := func(ids []string, flag string, multiport bool) {
		for _, id := range ids {
			b.fam(loV4, func(v6 bool, lo, _ string) {
				spec := []string{"-o", "lo", "!", "-d", lo}
				if multiport {
					spec = append(spec, "-p", "tcp", "-m", "multiport", "!", "--dports", dnsPort+","+tunnel)
				} else {
					spec = append(spec, "-p", "tcp", "!", "--dport", tunnel)
				}
				spec = append(spec, "-m", "owner", flag, id, "-j", ChainInRedirect)
				b.add(v6, "nat", ChainOutput, 0, spec...)
			})
			if !incLoopback {
				if dns {
					b.both("nat", ChainOutput, "-o", "lo", "-p", "tcp", "!", "--dport", dnsPort, "-m", "owner", "!", flag, id, "-j", "RETURN")
				} else {
					b.both("nat", ChainOutput, "-o", "lo", "-m", "owner", "!", flag, id, "-j", "RETURN")
				}
			}
			b.both("nat", ChainOutput, "-m", "owner", flag, id, "-j", "RETURN")
		}
	}
	owner(uids, "--uid-owner", dns)
	owner(gids, "--gid-owner", false)
	// 13. owner groups
	if c.OwnerGroupsInclude == "*" {
		for _, g := range capture.SplitList(c.OwnerGroupsExclude) {
			b.both("nat", ChainOutput, "-m", "owner", "--gid-owner", g, "-j", "RETURN")
		}
	} else {
		var spec []string
		for _, g := range capture.SplitList(c.OwnerGroupsInclude) {
			spec = append(spec, "-m", "owner", "!", "--gid-owner", g)
		}
		b.both("nat", ChainOutput, append(spec, "-j", "RETURN")...)
	}
	// 14. DNS
	if dns {
		b.both("raw", "OUTPUT", "-j", ChainOutputDNS)
		if captureAll || len(dns4) > 0 {
			b.add(false, "nat", ChainOutput, 0, "-j", ChainOutputDNS)
		}
		if b.ipv6 && (captureAll || len(dns6) > 0) {
			b.add(true, "nat", ChainOutput, 0, "-j", ChainOutputDNS)
		}
		perServer := func(proto, to string) {
			if captureAll {
				b.both("nat", ChainOutputDNS, "-p", proto, "--dport", dnsPort, "-j", "REDIRECT", to, agentDNSPort)
				return
			}
			for _, s := range dns4 {
				b.add(false, "nat", ChainOutputDNS, 0, "-p", proto, "--dport", dnsPort, "-d", s+"/32", "-j", "REDIRECT", to, agentDNSPort)
			}
			if b.ipv6 {
				for _, s := range dns6 {
					b.add(true, "nat", ChainOutputDNS, 0, "-p", proto, "--dport", dnsPort, "-d", s+"/128", "-j", "REDIRECT", to, agentDNSPort)
				}
			}
		}
		perServer("tcp", "--to-ports")
		perServer("udp", "--to-port")
		for _, o := range []struct {
			ids  []string
			flag string
		}{{uids, "--uid-owner"}, {gids, "--gid-owner"}} {
			for _, id := range o.ids {
				b.both("raw", ChainOutputDNS, "-p", "udp", "--dport", dnsPort, "-m", "owner", o.flag, id, "-j", "CT", "--zone", "1")
				b.both("raw", ChainOutputDNS, "-p", "udp", "--sport", agentDNSPort, "-m", "owner", o.flag, id, "-j", "CT", "--zone", "2")
			}
		}
		if captureAll {
			b.both("raw", "PREROUTING", "-j", ChainInbound)
			b.both("raw", ChainOutputDNS, "-p", "udp", "--dport", dnsPort, "-j", "CT", "--zone", "2")
			b.both("raw", ChainInbound, "-p", "udp", "--sport", dnsPort, "-j", "CT", "--zone", "1")
		} else {
			zones := func(v6 bool, servers []string, bits string) {
				if len(servers) == 0 || (v6 && !b.ipv6) {
					return
				}
				b.add(v6, "raw", "PREROUTING", 0, "-j", ChainInbound)
				for _, s := range servers {
					b.add(v6, "raw", ChainOutputDNS, 0, "-p", "udp", "--dport", dnsPort, "-d", s+bits, "-j", "CT", "--zone", "2")
					b.add(v6, "raw", ChainInbound, 0, "-p", "udp", "--sport", dnsPort, "-s", s+bits, "-j", "CT", "--zone", "1")
				}
			}
			zones(false, dns4, "/32")
			zones(true, dns6, "/128")
		}
	}
	// 15.
	b.fam(loV4, func(v6 bool, lo, _ string) {
		b.add(v6, "nat", ChainOutput, 0, "-d", lo, "-j", "RETURN")
	})
	// 16. exclude CIDRs
	for _, cidr := range exc4 {
		b.add(false, "nat", ChainOutput, 0, "-d", cidr, "-j", "RETURN")
	}
	if b.ipv6 {
		for _, cidr := range exc6 {
			b.add(true, "nat", ChainOutput, 0, "-d", cidr, "-j", "RETURN")
		}
	}
	// 17. outbound ports
	for _, p := range capture.SplitList(c.OutboundPortsInclude) {
		b.both("nat", ChainOutput, "-p", "tcp", "--dport", p, "-j", ChainRedirect)
	}
	// 18. include CIDRs
	if incAll {
		b.fam(loV4, func(v6 bool, _, _ string) {
			b.add(v6, "nat", ChainOutput, 0, "-j", ChainRedirect)
			for _, k := range virtIfs {
				b.add(v6, "nat", "PREROUTING", 1, "-i", k, "-j", ChainRedirect)
			}
		})
	} else {
		incl := func(v6 bool, cidrs []string) {
			for _, cidr := range cidrs {
				for _, k := range virtIfs {
					b.add(v6, "nat", "PREROUTING", 1, "-i", k, "-d", cidr, "-j", ChainRedirect)
				}
				b.add(v6, "nat", ChainOutput, 0, "-d", cidr, "-j", ChainRedirect)
			}
		}
		incl(false, inc4)
		if b.ipv6 {
			incl(true, inc6)
		}
	}
	// 19. TPROXY
	if tproxy {
		b.both("mangle", "PREROUTING", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "CONNMARK", "--save-mark")
		b.both("mangle", "OUTPUT", "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN")
		for _, o := range []struct {
			ids  []string
			flag string
		}{{uids, "--uid-owner"}, {gids, "--gid-owner"}} {
			for _, id := range o.ids {
				b.fam(loV4, func(v6 bool, lo, _ string) {
					b.add(v6, "mangle", "OUTPUT", 0, "!", "-d", lo, "-p", "tcp", "-o", "lo", "-m", "owner", o.flag, id, "-j", "MARK", "--set-mark", outboundMark)
				})
			}
		}
		b.both("mangle", "OUTPUT", "-p", "tcp", "-m", "connmark", "--mark", mark, "-j", "CONNMARK", "--restore-mark")
		b.bothInsert("mangle", ChainInbound, 1, "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN")
		b.fam(loV4, func(v6 bool, _, src string) {
			b.add(v6, "mangle", ChainInbound, 2, "-p", "tcp", "-s", src, "-i", "lo", "-j", "RETURN")
		})
		b.bothInsert("mangle", ChainInbound, 3, "-p", "tcp", "-i", "lo", "-m", "mark", "!", "--mark", outboundMark, "-j", "RETURN")
	}

	rs := &Ruleset{V4: b.v4, V6: b.v6, IPv6: b.ipv6}
	if tproxy && c.InboundPortsInclude != "" {
		rs.TProxyRoute = &TProxyRoute{Mark: mark, Table: c.InboundTProxyRouteTable}
	}
	return rs, nil
}
