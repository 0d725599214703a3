package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/iptables"
	"github.com/meshcap/meshcap/pkg/nftables"
)

// fallbackMode names the rules backend that `meshcap iptables` (and init's iptables fallback) uses for cfg.
func fallbackMode(cfg capture.Config) string {
	if cfg.NativeNftables {
		return "nftables"
	}
	return "iptables"
}

// initModeName is the mode init logs: the probe's "iptables" becomes the fallback backend actually used.
func initModeName(mode string, cfg capture.Config) string {
	if mode == loader.ProbeModeIPTables {
		return fallbackMode(cfg)
	}
	return mode
}

// runNftables is `meshcap iptables --native-nftables`: istio's native nftables rules in one `nft -f -`
// transaction. cfg has gone through ResolveDefaults. Unlike istio, -n prints the transaction and applies nothing.
func runNftables(ctx context.Context, log *zap.Logger, cmd *cobra.Command, cfg capture.Config, ex capture.ExecOptions) error {
	// Validate everything before looking at or touching the host.
	if _, err := nftables.Validate(cfg); err != nil {
		return err
	}
	if !cfg.CleanupOnly {
		if _, err := cfg.ResolveOwnerGroups(capture.OSGroupLookup); err != nil {
			return err
		}
	}
	if ex.SkipRuleApply {
		log.Info("--skip-rule-apply: nothing to do")
		return nil
	}
	rs := &nftables.Ruleset{}
	if !cfg.CleanupOnly {
		var err error
		if rs, err = buildNftables(cfg, ex.NetworkNamespace); err != nil {
			return err
		}
	}
	tx := nftables.Plan(rs, nftables.PlanOptions{CleanupOnly: cfg.CleanupOnly, Reconcile: cfg.Reconcile})
	if cfg.DryRun {
		_, err := fmt.Fprint(cmd.OutOrStdout(), tx.String())
		return err
	}
	if err := nftables.Apply(ctx, tx, ex.NetworkNamespace); err != nil {
		return err
	}
	if cfg.CleanupOnly {
		log.Info("nftables cleanup done: istio tables removed")
		return nil
	}
	a := &iptables.Applier{Runner: iptables.NetnsRunner(ex.NetworkNamespace), Log: log}
	if err := a.Routes(ctx, &iptables.Ruleset{IPv6: rs.IPv6, TProxyRoute: rs.TProxyRoute}); err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	log.Info("nftables rules programmed", zap.String("transaction", tx.String()))
	return nil
}

// buildNftables gathers the host facts in the target netns and builds the rules.
func buildNftables(cfg capture.Config, netnsPath string) (*nftables.Ruleset, error) {
	facts, err := iptables.FactsIn(netnsPath, cfg)
	if err != nil {
		return nil, fmt.Errorf("host facts: %w", err)
	}
	return nftables.Build(cfg, facts)
}
