package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/iptables"
)

// ebpfUnsupported lists what eBPF capture cannot do for cfg in the pod whose network namespace is netnsPath ("" =
// this process's): capture.EBPFUnsupported with that netns' host facts (IPv6 detected as istio does there).
// A netns without any non-loopback address has no IPv6 to capture.
func ebpfUnsupported(cfg capture.Config, netnsPath string) ([]string, error) {
	facts, err := iptables.FactsIn(netnsPath, cfg)
	if err != nil && !errors.Is(err, capture.ErrNoLocalAddress) {
		return nil, fmt.Errorf("pod facts of netns %q: %w", netnsPath, err)
	}
	return cfg.EBPFUnsupported(facts), nil
}

// errEBPFRefused is the error of an eBPF entry point asked for what eBPF capture cannot do: nothing is attached.
func errEBPFRefused(unsupported []string) error {
	return fmt.Errorf("refused: eBPF capture cannot do %s for this pod (nothing attached; use `meshcap iptables` or `meshcap init --mode auto`, which choose istio's rules; docs/ipv6-dns.md)",
		strings.Join(unsupported, "; "))
}
