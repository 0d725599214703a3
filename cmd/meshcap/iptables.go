package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/iptables"
)

func init() { register(newIptablesCmd) }

// newIptablesCmd is the istio-iptables drop-in: same flags, environment variables, rules and apply flow as
// `pilot-agent istio-iptables`.
func newIptablesCmd(log *zap.Logger) *cobra.Command {
	cfg := capture.Default()
	var ex capture.ExecOptions
	cmd := &cobra.Command{
		Use:   "iptables [flags]",
		Short: "Set up istio-iptables-compatible capture rules (drop-in for pilot-agent istio-iptables)",
		Long: `Generates exactly the rules of istio's "pilot-agent istio-iptables" and applies them with one
iptables-restore --noflush per IP family (legacy or nft, auto-detected). Every flag also reads the
environment variable istio-iptables reads; a flag on the command line wins.

--dry-run prints the IPv4 iptables-restore payload, then the IPv6 one when IPv6 is enabled
(DRY_RUN_FILE_PATH, when set, also receives istio's recorded dry-run stream).

Accepted for compatibility: --log_output_level (ignored), --skip-rule-apply (do nothing), --cni-mode (ignored),
--network-namespace (configure that netns). --run-validation runs istio-validation's redirect check from the
caller's netns after applying (or alone with --skip-rule-apply; --iptables-probe-port, --probe-timeout), exit 126
when it fails (README, "Validation").

--native-nftables (env NATIVE_NFTABLES) writes istio's native nftables rules instead: inet tables
istio-proxy-nat/mangle/raw in one atomic 'nft -f -' transaction (needs nft >= 1.0.1), text byte-identical to
istio-iptables --native-nftables. -n prints that transaction and applies nothing (istio applies it even
with -n). --cleanup-only deletes the three tables and adds nothing; --reconcile also deletes the istio tables
the new configuration does not use. Without --native-nftables nothing touches nft tables, and vice versa.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runIptables(cmd.Context(), log, cmd, cfg, ex)
		},
	}
	capture.BindFlags(cmd.Flags(), &cfg)
	capture.BindExecFlags(cmd.Flags(), &ex, nil)
	return cmd
}

func runIptables(ctx context.Context, log *zap.Logger, cmd *cobra.Command, cfg capture.Config, ex capture.ExecOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if ex.RunValidation { // validate.go
		return initValidate(ctx, log, func(ex capture.ExecOptions) error { return runIptables(ctx, log, cmd, cfg, ex) }, cfg, ex)
	}
	cfg.ResolveDefaults()
	if cfg.NativeNftables {
		return runNftables(ctx, log, cmd, cfg, ex)
	}
	// Validate everything before looking at or touching the host.
	if _, err := iptables.Validate(cfg); err != nil {
		return err
	}
	if ex.SkipRuleApply {
		log.Info("--skip-rule-apply: nothing to do")
		return nil
	}
	facts, err := iptables.FactsIn(ex.NetworkNamespace, cfg)
	if err != nil {
		return fmt.Errorf("host facts: %w", err)
	}
	rs, err := iptables.Build(cfg, facts)
	if err != nil {
		return err
	}
	if cfg.DryRun {
		if path := os.Getenv("DRY_RUN_FILE_PATH"); path != "" {
			if err := os.WriteFile(path, []byte(rs.DryRunStream()), 0o644); err != nil {
				return fmt.Errorf("write dry-run file: %w", err)
			}
		}
		if cfg.CleanupOnly {
			log.Info("--dry-run with --cleanup-only: nothing to print")
			return nil
		}
		out := cmd.OutOrStdout()
		if _, err := fmt.Fprint(out, rs.Payload(false)+rs.Payload(true)); err != nil {
			return err
		}
		return nil
	}
	a := &iptables.Applier{Runner: iptables.NetnsRunner(ex.NetworkNamespace), Log: log}
	if err := a.Apply(ctx, cfg, rs); err != nil {
		return fmt.Errorf("iptables: %w", err)
	}
	return nil
}
