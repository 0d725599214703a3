package nftables

import "github.com/meshcap/meshcap/pkg/capture"

// Rule sections of Build, in istio's generation order (CASES.md section D). Each one is a step of that list.

// interfaces: D.1 (-c, nat then, in TPROXY mode, mangle) and D.2 (-k, inserted at the head of nat prerouting).
func (b *builder) interfaces(p plan) {
	exclude := capture.SplitList(p.c.ExcludeInterfaces)
	for _, i := range exclude {
		b.nat(chainPrerouting, "iifname", i, counter, "return")
		b.nat(chainOutput, "oifname", i, counter, "return")
	}
	if p.tproxy {
		for _, i := range exclude {
			b.add(TableMangle, chainPrerouting, "iifname", i, counter, "return")
			b.add(TableMangle, chainOutput, "oifname", i, counter, "return")
		}
	}
	for _, k := range p.virtIfs {
		b.insert(TableNat, chainPrerouting, 0, "iifname", k, counter, "return")
	}
}

// inbound: D.7, only with a non-empty -b. -d counts only with -b '*'.
func (b *builder) inbound(p plan) {
	if !p.inboundEnabled {
		return
	}
	table, target := TableNat, chainInRedirect
	if p.tproxy {
		table, target = TableMangle, chainTProxy
		b.add(table, chainDivert, counter, "meta mark set", p.mark)
		b.add(table, chainDivert, counter, "accept")
		b.add(table, chainTProxy, "meta l4proto tcp", "ip daddr", "!=", p.loV4, "tproxy ip to", ":"+p.capPort,
			"meta mark set", p.mark, counter, "accept")
		b.add6(table, chainTProxy, "meta l4proto tcp", "ip6 daddr", "!=", loV6, "tproxy ip6 to", ":"+p.capPort,
			"meta mark set", p.mark, counter, "accept")
	}
	b.add(table, chainPrerouting, "meta l4proto tcp", counter, "jump", chainInbound)
	if p.c.InboundPortsInclude == "*" {
		for _, port := range capture.SplitList(p.c.InboundPortsExclude) {
			b.add(table, chainInbound, "meta l4proto tcp", "tcp dport", port, counter, "return")
		}
		if p.tproxy {
			b.add(table, chainInbound, "meta l4proto tcp", "ct state", "related,established", counter, "jump", chainDivert)
		}
		b.add(table, chainInbound, "meta l4proto tcp", counter, "jump", target)
		return
	}
	for _, port := range capture.SplitList(p.c.InboundPortsInclude) {
		if p.tproxy {
			b.add(table, chainInbound, "meta l4proto tcp", "ct state", "related,established", "tcp dport", port,
				counter, "jump", chainDivert)
		}
		b.add(table, chainInbound, "meta l4proto tcp", "tcp dport", port, counter, "jump", target)
	}
}

// owners: D.11 (key "skuid", with the DNS port set when DNS capture is on) and D.12 (key "skgid", never the set).
func (b *builder) owners(p plan, ids []string, key string, dnsSet bool) {
	notPort := p.tunnel
	if dnsSet {
		notPort = "{ 53, " + p.tunnel + " }"
	}
	for _, id := range ids {
		b.nat(chainOutputX, "oifname", "lo", "meta l4proto tcp", "ip daddr", "!=", p.loV4, "tcp dport", "!=", notPort,
			key, id, counter, "jump", chainInRedirect)
		b.add6(TableNat, chainOutputX, "oifname", "lo", "meta l4proto tcp", "ip6 daddr", "!=", loV6, "tcp dport", "!=",
			notPort, key, id, counter, "jump", chainInRedirect)
		if !p.incLoopback {
			if p.dns {
				b.nat(chainOutputX, "oifname", "lo", "meta l4proto tcp", "tcp dport", "!=", "53", key, "!=", id, counter, "return")
			} else {
				b.nat(chainOutputX, "oifname", "lo", key, "!=", id, counter, "return")
			}
		}
		b.nat(chainOutputX, key, id, counter, "return")
	}
}

// ownerGroups: D.13. Include "*" returns per excluded group; a list returns everything outside it in one rule.
func (b *builder) ownerGroups(c capture.Config) {
	if c.OwnerGroupsInclude == "*" {
		for _, g := range capture.SplitList(c.OwnerGroupsExclude) {
			b.nat(chainOutputX, "skgid", g, counter, "return")
		}
		return
	}
	var words []string
	for _, g := range capture.SplitList(c.OwnerGroupsInclude) {
		words = append(words, "skgid", "!=", g)
	}
	b.nat(chainOutputX, append(words, counter, "return")...)
}

// dnsRedirect: the nat half of D.14 (the raw output jump comes first, as in istio).
func (b *builder) dnsRedirect(p plan) {
	b.add(TableRaw, chainOutput, counter, "jump", chainOutputDNS)
	b.nat(chainOutputX, counter, "jump", chainOutputDNS)
	for _, proto := range []string{"tcp", "udp"} {
		if p.allDNS {
			match := []string{"udp dport", "53"}
			if proto == "tcp" {
				match = []string{"meta l4proto tcp", "tcp dport", "53"}
			}
			b.nat(chainOutputDNS, append(match, counter, "redirect", "to", ":"+agentDNSPort)...)
			continue
		}
		for _, s := range p.dns4 {
			b.nat(chainOutputDNS, "ip daddr", s+"/32", proto+" dport", "53", counter, "redirect", "to", ":"+agentDNSPort)
		}
		for _, s := range p.dns6 {
			b.add6(TableNat, chainOutputDNS, "ip6 daddr", s+"/128", proto+" dport", "53", counter, "redirect", "to", ":"+agentDNSPort)
		}
	}
}

// dnsZones: the raw conntrack-zone half of D.14.
func (b *builder) dnsZones(p plan) {
	for _, o := range []struct {
		key string
		ids []string
	}{{"skuid", p.uids}, {"skgid", p.gids}} {
		for _, id := range o.ids {
			b.add(TableRaw, chainOutputDNS, "udp dport", "53", "meta", o.key, id, counter, "ct", "zone", "set", "1")
			b.add(TableRaw, chainOutputDNS, "udp sport", agentDNSPort, "meta", o.key, id, counter, "ct", "zone", "set", "2")
		}
	}
	if p.allDNS {
		b.add(TableRaw, chainPrerouting, counter, "jump", chainInbound)
		b.add(TableRaw, chainOutputDNS, "udp dport", "53", counter, "ct", "zone", "set", "2")
		b.add(TableRaw, chainInbound, "udp sport", "53", counter, "ct", "zone", "set", "1")
		return
	}
	b.add(TableRaw, chainPrerouting, counter, "jump", chainInbound)
	for _, s := range p.dns4 {
		b.add(TableRaw, chainOutputDNS, "udp dport", "53", "ip daddr", s+"/32", counter, "ct", "zone", "set", "2")
		b.add(TableRaw, chainInbound, "udp sport", "53", "ip saddr", s+"/32", counter, "ct", "zone", "set", "1")
	}
	for _, s := range p.dns6 {
		b.add6(TableRaw, chainOutputDNS, "udp dport", "53", "ip6 daddr", s+"/128", counter, "ct", "zone", "set", "2")
		b.add6(TableRaw, chainInbound, "udp sport", "53", "ip6 saddr", s+"/128", counter, "ct", "zone", "set", "1")
	}
}

// outbound: D.15 (loopback), D.16 (-x), D.17 (-q), D.18 (-i, with the -k prerouting inserts).
func (b *builder) outbound(p plan) {
	b.nat(chainOutputX, "ip daddr", p.loV4, counter, "return")
	b.add6(TableNat, chainOutputX, "ip6 daddr", loV6, counter, "return")
	for _, cidr := range p.exc4 {
		b.nat(chainOutputX, "ip daddr", cidr, counter, "return")
	}
	for _, cidr := range p.exc6 {
		b.add6(TableNat, chainOutputX, "ip6 daddr", cidr, counter, "return")
	}
	for _, port := range capture.SplitList(p.c.OutboundPortsInclude) {
		b.nat(chainOutputX, "tcp dport", port, counter, "jump", chainRedirect)
	}
	if p.incAll {
		b.nat(chainOutputX, counter, "jump", chainRedirect)
		for _, k := range p.virtIfs {
			b.insert(TableNat, chainPrerouting, 0, "iifname", k, counter, "jump", chainRedirect)
		}
		return
	}
	for _, fam := range []struct {
		match string
		cidrs []string
		v6    bool
	}{{"ip daddr", p.inc4, false}, {"ip6 daddr", p.inc6, true}} {
		if fam.v6 && !b.ipv6 {
			continue
		}
		for _, cidr := range fam.cidrs {
			for _, k := range p.virtIfs {
				b.insert(TableNat, chainPrerouting, 0, "iifname", k, fam.match, cidr, counter, "jump", chainRedirect)
			}
			b.nat(chainOutputX, fam.match, cidr, counter, "jump", chainRedirect)
		}
	}
}

// tproxyMarks: D.19, the mark/connmark rules of TPROXY mode (whatever -b is) and the istio-inbound guards.
func (b *builder) tproxyMarks(p plan) {
	m := TableMangle
	b.add(m, chainPrerouting, "meta l4proto tcp", "mark", p.mark, counter, "ct mark set mark")
	b.add(m, chainOutput, "oifname", "lo", "meta l4proto tcp", "mark", p.mark, counter, "return")
	for _, o := range []struct {
		key string
		ids []string
	}{{"skuid", p.uids}, {"skgid", p.gids}} {
		for _, id := range o.ids {
			b.add(m, chainOutput, "oifname", "lo", "meta l4proto tcp", "ip daddr", "!=", p.loV4, o.key, id, counter,
				"meta mark set", outboundMark)
			b.add6(m, chainOutput, "oifname", "lo", "meta l4proto tcp", "ip6 daddr", "!=", loV6, o.key, id, counter,
				"meta mark set", outboundMark)
		}
	}
	b.add(m, chainOutput, "meta l4proto tcp", "ct", "mark", p.mark, counter, "meta mark set", "ct", "mark")
	b.insert(m, chainInbound, 0, "meta l4proto tcp", "mark", p.mark, counter, "return")
	b.insert(m, chainInbound, 1, "iifname", "lo", "meta l4proto tcp", "ip saddr", srcV4, counter, "return")
	b.insert6(m, chainInbound, 1, "iifname", "lo", "meta l4proto tcp", "ip6 saddr", srcV6, counter, "return")
	b.insert(m, chainInbound, 2, "iifname", "lo", "meta l4proto tcp", "mark", "!=", outboundMark, counter, "return")
}
