package main

import (
	"context"
	"strings"
	"time"

	"github.com/meshcap/meshcap/pkg/nftables"
)

// ownNetnsPath turns status's --netns into the path nftables.List enters ("" = this process's own netns).
func ownNetnsPath(netnsPath string) string {
	if netnsPath == ownNetns {
		return ""
	}
	return netnsPath
}

// istioNftTables lists "table: chain, chain" for the istio nftables tables (inet istio-proxy-nat/mangle/raw) in the
// netns. No nft binary, or no right to read, counts as no tables.
func istioNftTables(ctx context.Context, netnsPath string) []string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tables, err := nftables.List(ctx, ownNetnsPath(netnsPath))
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(tables))
	for _, t := range tables {
		out = append(out, "inet "+t.Table+" ("+strings.Join(t.Chains, ", ")+")")
	}
	return out
}
