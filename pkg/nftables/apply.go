package nftables

import (
	"context"
	"errors"
	"fmt"
	"os/exec"

	"sigs.k8s.io/knftables"

	"github.com/meshcap/meshcap/pkg/iptables"
)

// ErrNoNft is returned when there is no usable nft binary (knftables needs nft >= 1.0.1).
var ErrNoNft = errors.New("native nftables is enabled, but no usable nft binary (>= 1.0.1) was found")

// newNft opens knftables for the current network namespace: it runs `nft --version` and a `nft --check` of a
// test table, so a missing or too old nft, or missing privileges, fail here before any change.
func newNft(family knftables.Family, table string) (knftables.Interface, error) {
	nft, err := knftables.New(family, table)
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("%w: %v", ErrNoNft, err)
		}
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return nft, nil
}

// Apply hands tx to one `nft -f -` run in the network namespace at netnsPath ("" = this one): all of it is
// applied or none of it.
func Apply(ctx context.Context, tx *knftables.Transaction, netnsPath string) error {
	return iptables.InNetns(netnsPath, func() error {
		nft, err := newNft("", "")
		if err != nil {
			return err
		}
		if err := nft.Run(ctx, tx); err != nil {
			return fmt.Errorf("nftables run failed: %w", err)
		}
		return nil
	})
}

// TableChains is one istio table found in a network namespace and its chains (nft's order).
type TableChains struct {
	Table  string   `json:"table"`
	Chains []string `json:"chains"`
}

// List returns the istio tables (inet istio-proxy-nat/mangle/raw) that exist in the network namespace at
// netnsPath, in Tables order, with their chains. It only reads.
func List(ctx context.Context, netnsPath string) ([]TableChains, error) {
	var out []TableChains
	err := iptables.InNetns(netnsPath, func() error {
		for _, t := range Tables {
			nft, err := newNft(knftables.InetFamily, t)
			if err != nil {
				return err
			}
			chains, err := nft.List(ctx, "chains")
			if knftables.IsNotFound(err) {
				continue
			}
			if err != nil {
				return fmt.Errorf("list table inet %s: %w", t, err)
			}
			out = append(out, TableChains{Table: t, Chains: chains})
		}
		return nil
	})
	return out, err
}
