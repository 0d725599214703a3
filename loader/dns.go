package loader

// DNS capture settings (bpf/include/dns.h): per config key, the DNS port and --capture-all-dns in mc_dns, and the
// resolv.conf nameservers in mc_dns_srv. Written by SetPolicy with the rest of a policy, in the same order: entries
// a policy needs are added before the settings that use them, stale ones removed after.

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/meshcap/meshcap/pkg/capture"
)

// Map names (as in bpf/include/dns.h).
const (
	mapDNS     = "mc_dns"
	mapDNSSrv  = "mc_dns_srv"
	mapDNSOrig = "mc_dns_orig"
)

// dnsFlagAll is MC_DNS_F_ALL (TestEnumsMatchHeader checks it).
const dnsFlagAll = 1 << 0

type (
	dnsConfigValue = connect4McDnsConfig
	dnsSrvKey      = connect4McDnsSrvKey
)

// writeDNS writes the DNS settings of p under cfgKey (the servers first, then the mc_dns entry, or its removal when
// p has no DNS capture) and returns the server keys p needs.
func (o *Objects) writeDNS(cfgKey uint64, p capture.Policy) (map[dnsSrvKey]bool, error) {
	want := map[dnsSrvKey]bool{}
	cfgs, srvs := o.Maps[mapDNS], o.Maps[mapDNSSrv]
	if cfgs == nil || srvs == nil {
		if p.DNS.Port != 0 {
			return want, errors.New("attachment predates DNS capture: detach it, then attach again")
		}
		return want, nil
	}
	one := uint8(1)
	for _, a := range p.DNS.Servers {
		k := newDNSSrvKey(cfgKey, a)
		want[k] = true
		if err := srvs.Update(&k, &one, ebpf.UpdateAny); err != nil {
			return want, fmt.Errorf("write DNS server %s to %s: %w", a, mapDNSSrv, err)
		}
	}
	if p.DNS.Port == 0 {
		if err := cfgs.Delete(&cfgKey); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return want, fmt.Errorf("delete %s key %d: %w", mapDNS, cfgKey, err)
		}
		return want, nil
	}
	v := dnsConfigValue{Port: p.DNS.Port}
	if p.DNS.All {
		v.Flags |= dnsFlagAll
	}
	if err := cfgs.Update(&cfgKey, &v, ebpf.UpdateAny); err != nil {
		return want, fmt.Errorf("write %s: %w", mapDNS, err)
	}
	return want, nil
}

// deleteDNS removes the server entries of cfgKey not in keep (all of them and the mc_dns entry when keep is nil).
func (o *Objects) deleteDNS(cfgKey uint64, keep map[dnsSrvKey]bool) error {
	if o.Maps[mapDNS] == nil || o.Maps[mapDNSSrv] == nil {
		return nil // an attachment from before DNS capture
	}
	if keep == nil {
		if err := o.Maps[mapDNS].Delete(&cfgKey); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete %s key %d: %w", mapDNS, cfgKey, err)
		}
	}
	return deleteWhere(o.Maps[mapDNSSrv], func(k *dnsSrvKey) bool { return k.Cfg == cfgKey && !keep[*k] })
}

// newDNSSrvKey is the mc_dns_srv key of server a: IPv4 in addr[0]; anything else (an IPv4-mapped server included,
// as istio puts it in its IPv6 rules) as IPv6.
func newDNSSrvKey(cfgKey uint64, a netip.Addr) dnsSrvKey {
	k := dnsSrvKey{Cfg: cfgKey}
	if a.Is4() {
		k.Addr[0] = be32(a)
		return k
	}
	k.V6 = 1
	k.Addr = be32x4(a)
	return k
}
