package main

import (
	"errors"
	"fmt"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/iptables"
)

// setPodDNS fills pol.DNS, the eBPF twin of istio's DNS rules, from cfg and the resolv.conf servers read exactly as
// the iptables mode reads them for the pod in netnsPath (iptables.FactsIn: this process's /etc/resolv.conf).
// Nothing is read when --redirect-dns is off.
func setPodDNS(pol *capture.Policy, netnsPath string, cfg capture.Config) error {
	if !cfg.RedirectDNS {
		pol.DNS = capture.DNSPolicy{}
		return nil
	}
	facts, err := iptables.FactsIn(netnsPath, cfg)
	if err != nil && !errors.Is(err, capture.ErrNoLocalAddress) {
		return fmt.Errorf("DNS servers of netns %q: %w", netnsPath, err)
	}
	pol.DNS = cfg.DNSPolicy(facts)
	return nil
}
