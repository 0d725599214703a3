// Package nftables is meshcap's istio-iptables `--native-nftables` fallback: a pure builder (Build) whose
// knftables transaction text is byte-identical to istio's (testdata/istio-golden/nftables/CASES.md), the transaction
// plans for apply, cleanup and reconcile (Plan), and the apply step (Apply) that hands one transaction to
// `nft -f -` through sigs.k8s.io/knftables.
//
// Invariants:
//   - Build and Plan touch nothing on the host: host facts are passed in, and the transaction is rendered by
//     knftables without an nft binary.
//   - Every value is validated (Validate, capture.Config.ResolveOwnerGroups) before nft sees anything; errors name the bad value.
//   - Rules are pasted into nft syntax word for word, as istio does; lists are not trimmed, sorted or de-duplicated.
//   - Only the three istio tables (inet istio-proxy-nat/mangle/raw) are ever created, flushed or deleted.
package nftables

import (
	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/iptables"
)

// istio's table names, in transaction order; every table is in the inet family.
const (
	TableNat    = "istio-proxy-nat"
	TableMangle = "istio-proxy-mangle"
	TableRaw    = "istio-proxy-raw"
)

// Tables lists the istio tables in transaction order.
var Tables = []string{TableNat, TableMangle, TableRaw}

// Chain names (istio's constants).
const (
	chainPrerouting = "prerouting"
	chainOutput     = "output"
	chainInbound    = "istio-inbound"
	chainRedirect   = "istio-redirect"
	chainInRedirect = "istio-in-redirect"
	chainOutputX    = "istio-output"
	chainOutputDNS  = "istio-output-dns"
	chainDivert     = "istio-divert"
	chainTProxy     = "istio-tproxy"
	chainDrop       = "istio-drop"
)

// Fixed istio constants.
const (
	counter      = "counter"
	agentDNSPort = "15053"
	outboundMark = "1338"
	srcV4        = "127.0.0.6/32"
	srcV6        = "::6/128"
	loV6         = "::1/128"
)

// Rule is one generated rule: appended to Chain, or inserted at Index when Index is not nil.
type Rule struct {
	Table string
	Chain string
	Index *int
	Words []string
}

// Ruleset is the output of Build: every rule in generation order, plus what the apply step needs besides nft.
type Ruleset struct {
	Rules []Rule
	IPv6  bool // IPv6 twins are in Rules; ::6/128 goes on lo at apply time
	// TPROXY routing (ip rule + ip route), set when TPROXY mode has inbound ports, as in iptables mode.
	TProxyRoute *iptables.TProxyRoute
}

// builder accumulates rules in generation order.
type builder struct {
	ipv6  bool
	rules []Rule
}

func (b *builder) add(table, chain string, words ...string) {
	b.rules = append(b.rules, Rule{Table: table, Chain: chain, Words: words})
}

// add6 adds a rule only when IPv6 is on (istio's AppendV6RuleIfSupported).
func (b *builder) add6(table, chain string, words ...string) {
	if b.ipv6 {
		b.add(table, chain, words...)
	}
}

func (b *builder) insert(table, chain string, index int, words ...string) {
	b.rules = append(b.rules, Rule{Table: table, Chain: chain, Index: &index, Words: words})
}

func (b *builder) insert6(table, chain string, index int, words ...string) {
	if b.ipv6 {
		b.insert(table, chain, index, words...)
	}
}

// nat adds to the nat table's chain.
func (b *builder) nat(chain string, words ...string) { b.add(TableNat, chain, words...) }

// plan is the validated, split view of a Config that the rule sections read.
type plan struct {
	c              capture.Config
	tproxy         bool
	uids, gids     []string
	virtIfs        []string
	inc4, inc6     []string
	incAll         bool
	incLoopback    bool
	exc4, exc6     []string
	dns, allDNS    bool
	dns4, dns6     []string
	loV4, tunnel   string
	mark, capPort  string
	inboundEnabled bool
}

func newPlan(c capture.Config, host capture.HostFacts) plan {
	p := plan{
		c: c, tproxy: c.InboundInterceptionMode == "TPROXY",
		uids: capture.SplitList(c.ProxyUID), gids: capture.SplitList(c.ProxyGID),
		virtIfs: capture.SplitList(c.KubeVirtInterfaces),
		incAll:  c.OutboundIPRangesInclude == "*",
		loV4:    c.HostIPv4LoopbackCIDR, tunnel: c.InboundTunnelPort,
		mark: c.InboundTProxyMark, capPort: c.InboundCapturePort,
		inboundEnabled: c.InboundPortsInclude != "",
		allDNS:         c.CaptureAllDNS,
	}
	if !p.incAll {
		p.inc4, p.inc6, p.incLoopback = iptables.SplitCIDRs(c.OutboundIPRangesInclude)
	}
	p.exc4, p.exc6, _ = iptables.SplitCIDRs(c.OutboundIPRangesExclude)
	if c.RedirectDNS && !c.CaptureAllDNS {
		p.dns4, p.dns6 = host.DNSServersV4, host.DNSServersV6
	}
	// DNS capture turns itself off without servers and without --capture-all-dns.
	p.dns = c.RedirectDNS && (c.CaptureAllDNS || len(p.dns4) > 0 || len(p.dns6) > 0)
	return p
}

// Build validates c and generates istio's nftables rules for the given host facts, in istio's generation order
// (CASES.md section D). c must have gone through ResolveDefaults (or carry explicit -u/-g).
func Build(c capture.Config, host capture.HostFacts) (*Ruleset, error) {
	if _, err := Validate(c); err != nil {
		return nil, err
	}
	p := newPlan(c, host)
	b := &builder{ipv6: host.IPv6}
	b.interfaces(p)
	if c.DropInvalid {
		b.add(TableMangle, chainPrerouting, "meta l4proto tcp", "ct state", "invalid", counter, "jump", chainDrop)
		b.add(TableMangle, chainDrop, counter, "drop")
	}
	b.nat(chainInbound, "meta l4proto tcp", "tcp dport", p.tunnel, counter, "return")
	b.nat(chainRedirect, "meta l4proto tcp", counter, "redirect to", ":"+c.ProxyPort)
	b.nat(chainInRedirect, "meta l4proto tcp", counter, "redirect to", ":"+p.capPort)
	b.inbound(p)
	b.nat(chainOutput, counter, "jump", chainOutputX)
	for _, port := range capture.SplitList(c.OutboundPortsExclude) {
		b.nat(chainOutputX, "tcp dport", port, counter, "return")
		b.nat(chainOutputX, "udp dport", port, counter, "return")
	}
	b.nat(chainOutputX, "oifname", "lo", "ip saddr", srcV4, counter, "return")
	b.add6(TableNat, chainOutputX, "oifname", "lo", "ip6 saddr", srcV6, counter, "return")
	b.owners(p, p.uids, "skuid", p.dns)
	b.owners(p, p.gids, "skgid", false)
	b.ownerGroups(c)
	if p.dns {
		b.dnsRedirect(p)
		b.dnsZones(p)
	}
	b.outbound(p)
	if p.tproxy {
		b.tproxyMarks(p)
	}
	rs := &Ruleset{Rules: b.rules, IPv6: host.IPv6}
	if p.tproxy && p.inboundEnabled {
		rs.TProxyRoute = &iptables.TProxyRoute{Mark: p.mark, Table: c.InboundTProxyRouteTable}
	}
	return rs, nil
}
