package main

import (
	"fmt"
	"net/netip"

	"github.com/spf13/pflag"

	"github.com/meshcap/meshcap/proxy"
)

// The proxy's IPv6 listeners (as Envoy in a dual-stack pod): flags and how they follow the IPv4 ones.

type proxyDualStackFlags struct {
	outboundAddr6, inboundAddr6, inboundSource6 string
}

func bindProxyDualStackFlags(fl *pflag.FlagSet, f *proxyDualStackFlags) {
	fl.StringVar(&f.outboundAddr6, "outbound-addr6", proxy.DefaultOutboundAddr6, `IPv6 outbound listener (default: [::1] with the outbound port; "" = none)`)
	fl.StringVar(&f.inboundAddr6, "inbound-addr6", proxy.DefaultInboundAddr6, `IPv6 inbound listener, IPv6-only beside the IPv4 one (default: [::] with the inbound port; "" = none)`)
	fl.StringVar(&f.inboundSource6, "inbound-source6", proxy.DefaultInboundSource6, `source address of inbound upstream connections to IPv6 destinations ("" = kernel's choice)`)
}

// applyDualStack fills cfg's IPv6 listeners and source. A listener address not given explicitly takes the port
// of its IPv4 twin (so -p, -z, --outbound-addr and --inbound-addr move both); none is added when the twin is off
// or is itself IPv6.
func (f *proxyDualStackFlags) applyDualStack(fl *pflag.FlagSet, cfg *proxy.Config) error {
	var err error
	if cfg.OutboundAddr6, err = twin6(cfg.OutboundAddr, f.outboundAddr6, "--outbound-addr6", fl.Changed("outbound-addr6")); err != nil {
		return err
	}
	if cfg.InboundAddr6, err = twin6(cfg.InboundAddr, f.inboundAddr6, "--inbound-addr6", fl.Changed("inbound-addr6")); err != nil {
		return err
	}
	if f.inboundSource6 != "" {
		a, err := netip.ParseAddr(f.inboundSource6)
		if err != nil || !a.Is6() || a.Is4In6() {
			return fmt.Errorf("invalid --inbound-source6 %q: want an IPv6 address", f.inboundSource6)
		}
		cfg.InboundSource6 = a
	}
	return nil
}

func twin6(v4, v6, flag string, explicit bool) (string, error) {
	if v6 == "" || v4 == "" {
		return "", nil
	}
	ap, err := netip.ParseAddrPort(v6)
	if err != nil || !ap.Addr().Is6() || ap.Addr().Is4In6() {
		return "", fmt.Errorf("invalid %s %q: want [ipv6]:port", flag, v6)
	}
	if explicit {
		return v6, nil
	}
	prim, err := netip.ParseAddrPort(v4)
	if err != nil || (prim.Addr().Is6() && !prim.Addr().Is4In6()) {
		return "", nil
	}
	return netip.AddrPortFrom(ap.Addr(), prim.Port()).String(), nil
}
