package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/proxy"
)

// The proxy's DNS port (istio's agent port 15053), which --redirect-dns rules send the pod's DNS to.

type proxyDNSFlags struct {
	addr, addr6, resolvConf string
	off                     bool
}

func bindProxyDNSFlags(fl *pflag.FlagSet, f *proxyDNSFlags) {
	fl.StringVar(&f.addr, "dns-addr", proxy.DefaultDNSAddr, "DNS listener (UDP and TCP) that --redirect-dns capture sends the pod's DNS to")
	fl.StringVar(&f.addr6, "dns-addr6", proxy.DefaultDNSAddr6, `IPv6 DNS listener (UDP and TCP; skipped where there is no IPv6; "" = none)`)
	fl.StringVar(&f.resolvConf, "resolv-conf", "/etc/resolv.conf", "the pod's resolv.conf: its nameservers (port 53) are the servers DNS queries are forwarded to")
	fl.BoolVar(&f.off, "no-dns", false, "do not serve DNS")
}

// listenDNS opens the DNS listeners (before the privilege drop); nil when --no-dns.
func listenDNS(log *zap.Logger, f *proxyDNSFlags) (*proxy.DNS, error) {
	if f.off {
		return nil, nil
	}
	data, err := os.ReadFile(f.resolvConf)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("invalid --resolv-conf %q: %w", f.resolvConf, err)
	}
	v4, v6 := capture.ParseResolvConf(data)
	cfg := proxy.DNSConfig{}
	for _, s := range append(v4, v6...) {
		cfg.Upstreams = append(cfg.Upstreams, netip.AddrPortFrom(netip.MustParseAddr(s), 53))
	}
	for _, a := range []string{f.addr, f.addr6} {
		if a != "" {
			cfg.Addrs = append(cfg.Addrs, a)
		}
	}
	if len(cfg.Addrs) == 0 {
		return nil, errors.New(`invalid --dns-addr "": use --no-dns to serve no DNS`)
	}
	d, err := proxy.NewDNS(cfg, log.Named("dns"))
	if err != nil {
		return nil, err
	}
	if err := d.Listen(); err != nil {
		return nil, err
	}
	return d, nil
}

// serveDNS answers DNS until ctx ends; the returned function waits for it to stop.
func serveDNS(ctx context.Context, d *proxy.DNS) (wait func()) {
	if d == nil {
		return func() {}
	}
	done := make(chan struct{})
	go func() { d.Serve(ctx); close(done) }()
	return func() { <-done }
}
