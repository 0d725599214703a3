package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/iptables"
)

func init() { register(newInitCmd) }

// initOptions are meshcap init's own flags (the rest are istio-iptables').
type initOptions struct {
	mode       string // auto, ebpf, iptables
	cgroup     string // explicit target cgroup
	podUID     string // find the pod's cgroup under hostCgroup
	hostCgroup string
	pinRoot    string
	maxConns   uint32
}

func newInitCmd(log *zap.Logger) *cobra.Command {
	cfg := capture.Default()
	var ex capture.ExecOptions
	o := initOptions{mode: "auto", pinRoot: loader.DefaultPinRoot, maxConns: capture.DefaultMaxConnections}
	cmd := &cobra.Command{
		Use:   "init [--mode auto|ebpf|iptables] [istio-iptables flags]",
		Short: "Set up capture for the pod this runs in (drop-in for istio-init)",
		Long: `Sets up traffic capture for the pod it runs in: its cgroup and its network namespace.

--mode auto (default) runs the feature probe (see 'meshcap probe') and uses eBPF when every feature the
requested capture needs is present and eBPF can capture everything istio's rules would for this pod: no
--redirect-dns, no owner groups, no -k/-c, TPROXY or --drop-invalid (docs/ipv6-dns.md); otherwise it applies
istio-iptables' exact rules. IPv6 is captured in both modes exactly when istio detects it from the pod's addresses
(and --dual-stack). The choice and the
reason are logged. --mode ebpf fails when eBPF cannot be used;
--mode iptables is 'meshcap iptables'.

Target cgroup: --cgroup DIR; else --pod-uid UID (Kubernetes: the downward API's metadata.uid) searched under
--host-cgroup (the host's cgroup2 tree mounted in the container); else this process's own cgroup from
/proc/self/cgroup. Under Kubernetes each container has its own cgroup, so the pod's cgroup (--pod-uid) is the one
that covers the app and proxy containers.

Every istio-iptables flag and environment variable is accepted, so istio-init's argument list works unchanged.
Exit codes are istio-init's: 0 on success, 1 on any error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runInit(cmd.Context(), log, cmd, o, cfg, ex)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.mode, "mode", o.mode, "capture mode: auto, ebpf or iptables")
	f.StringVar(&o.cgroup, "cgroup", "", "cgroup v2 directory to capture (default: see --pod-uid, else own cgroup)")
	f.StringVar(&o.podUID, "pod-uid", "", "Kubernetes pod UID: capture the pod's cgroup, found under --host-cgroup")
	f.StringVar(&o.hostCgroup, "host-cgroup", "/host/sys/fs/cgroup", "host cgroup2 tree, for --pod-uid")
	f.StringVar(&o.pinRoot, "pin-root", o.pinRoot, "bpffs directory for pinned links and maps (the host's bpffs)")
	f.StringVar(&o.pinRoot, "pin-dir", o.pinRoot, "same as --pin-root (the name meshcap ebpf and meshcap agent use)")
	f.Uint32Var(&o.maxConns, "max-connections", o.maxConns, "eBPF mode: per-pod capacity of captured connections; beyond it new connects are refused (EPERM) and counted")
	capture.BindFlags(f, &cfg)
	capture.BindExecFlags(f, &ex, nil)
	return cmd
}

// initTarget resolves the cgroup to capture.
func initTarget(o initOptions) (string, string, error) {
	switch {
	case o.cgroup != "":
		return o.cgroup, "--cgroup", nil
	case o.podUID != "":
		dir, err := loader.FindPodCgroup(o.hostCgroup, o.podUID)
		return dir, "pod UID " + o.podUID, err
	}
	dir, err := loader.OwnCgroupDir()
	return dir, "own cgroup (/proc/self/cgroup)", err
}

func runInit(ctx context.Context, log *zap.Logger, cmd *cobra.Command, o initOptions, cfg capture.Config, ex capture.ExecOptions) error {
	switch o.mode {
	case "auto", loader.ProbeModeEBPF, loader.ProbeModeIPTables:
	default:
		return fmt.Errorf("invalid --mode %q: want auto, ebpf or iptables", o.mode)
	}
	if ex.RunValidation { // validate.go
		return initValidate(ctx, log, func(ex capture.ExecOptions) error { return runInit(ctx, log, cmd, o, cfg, ex) }, cfg, ex)
	}
	cfg.ResolveDefaults()
	// Validate for both backends before looking at the host: a value rejected for one mode is rejected for both.
	pol, err := iptables.Validate(cfg)
	if err != nil {
		return err
	}
	if err := capture.CheckMaxConnections(o.maxConns); err != nil {
		return err
	}
	if ex.SkipRuleApply {
		log.Info("--skip-rule-apply: nothing to do")
		return nil
	}
	if o.mode == loader.ProbeModeIPTables || cfg.DryRun || cfg.CleanupOnly {
		reason := "--mode iptables"
		if o.mode != loader.ProbeModeIPTables {
			reason = "--dry-run/--cleanup-only act on the fallback's rules only"
		}
		log.Info("capture mode chosen", zap.String("mode", fallbackMode(cfg)), zap.String("reason", reason))
		return runIptables(ctx, log, cmd, cfg, ex)
	}

	useHostViews(log, &o.pinRoot, &o.cgroup)
	mode, reason, cgroupDir, pol := decideInitMode(log, o, cfg, pol, ex.NetworkNamespace)
	log.Info("capture mode chosen", zap.String("mode", initModeName(mode, cfg)), zap.String("reason", reason),
		zap.String("cgroup", cgroupDir), zap.String("requested", o.mode))
	if mode == loader.ProbeModeEBPF {
		err := initEBPF(log, o, cgroupDir, ex.NetworkNamespace, pol)
		if err == nil {
			err = loader.Failpoint("init-after-ebpf")
		}
		if err == nil {
			return finishEBPF(ctx, log, cmd, cfg, ex)
		}
		if o.mode == loader.ProbeModeEBPF {
			return fmt.Errorf("init --mode ebpf: %w", err)
		}
		mode, reason = fallbackMode(cfg), "eBPF attach failed: "+err.Error()
		log.Warn("capture mode changed", zap.String("mode", mode), zap.String("reason", reason))
	}
	if o.mode == loader.ProbeModeEBPF {
		return fmt.Errorf("init --mode ebpf: eBPF capture is not possible: %s", reason)
	}
	// Exactly one mode: eBPF capture of this pod (from an earlier run, or a partial one) goes before the rules.
	if err := uncaptureEBPF(log, o, cgroupDir, ex.NetworkNamespace); err != nil {
		return fmt.Errorf("eBPF capture of this pod could not be removed, so istio's rules are not applied on top of it: %w", err)
	}
	if err := runIptables(ctx, log, cmd, cfg, ex); err != nil {
		return err
	}
	log.Info("capture set up", zap.String("mode", fallbackMode(cfg)))
	return nil
}

// finishEBPF makes eBPF the one mode: istio's rules from an earlier iptables or nftables run of this pod go.
func finishEBPF(ctx context.Context, log *zap.Logger, cmd *cobra.Command, cfg capture.Config, ex capture.ExecOptions) error {
	if err := removeIstioRules(ctx, log, cmd, cfg, ex); err != nil {
		return fmt.Errorf("eBPF capture is in place, but removing the iptables rules of an earlier run failed: %w", err)
	}
	if err := removeIstioNftables(ctx, log, cmd, cfg, ex); err != nil {
		return fmt.Errorf("eBPF capture is in place, but removing the nftables rules of an earlier run failed: %w", err)
	}
	log.Info("capture set up", zap.String("mode", loader.ProbeModeEBPF))
	return nil
}

// uncaptureEBPF removes the eBPF capture of the pod (its cgroup's outbound attachment, its netns's inbound one).
func uncaptureEBPF(log *zap.Logger, o initOptions, cgroupDir, netnsPath string) error {
	if netnsPath == "" {
		netnsPath = ownNetns
	}
	res, err := loader.UncapturePod(loader.PodTarget{Cgroup: cgroupDir, Netns: netnsPath}, o.pinRoot)
	if res.Outbound || res.Inbound {
		log.Info("removed eBPF capture of this pod", zap.Bool("outbound", res.Outbound), zap.Bool("inbound", res.Inbound))
	}
	return err
}

// removeIstioRules runs istio's cleanup in the pod's netns when ISTIO chains are there.
func removeIstioRules(ctx context.Context, log *zap.Logger, cmd *cobra.Command, cfg capture.Config, ex capture.ExecOptions) error {
	runner := iptables.ExecRunner{}
	if ex.NetworkNamespace != "" {
		runner = iptables.NetnsRunner(ex.NetworkNamespace)
	}
	chains := istioChains(ctx, runner)
	if len(chains) == 0 {
		return nil
	}
	log.Info("removing istio's iptables rules of an earlier run", zap.Strings("chains", chains))
	cfg.CleanupOnly, cfg.NativeNftables = true, false
	return runIptables(ctx, log, cmd, cfg, ex)
}

// removeIstioNftables deletes istio's nftables tables (an earlier --native-nftables run) in the pod's netns when
// they are there. No nft binary means no such tables to remove.
func removeIstioNftables(ctx context.Context, log *zap.Logger, cmd *cobra.Command, cfg capture.Config, ex capture.ExecOptions) error {
	tables := istioNftTables(ctx, ex.NetworkNamespace)
	if len(tables) == 0 {
		return nil
	}
	log.Info("removing istio's nftables tables of an earlier run", zap.Strings("tables", tables))
	cfg.CleanupOnly, cfg.NativeNftables = true, true
	return runIptables(ctx, log, cmd, cfg, ex)
}

// decideInitMode runs the probe and returns the mode (ebpf or iptables), why, the target cgroup, and pol completed
// with the pod's facts (the ones the iptables mode would build its rules from).
func decideInitMode(log *zap.Logger, o initOptions, cfg capture.Config, pol capture.Policy, netnsPath string) (mode, reason, cgroupDir string, _ capture.Policy) {
	cgroupDir, how, err := initTarget(o)
	if err != nil {
		return loader.ProbeModeIPTables, "no cgroup to attach to: " + err.Error(), "", pol
	}
	facts, err := iptables.EBPFFactsIn(netnsPath, cfg)
	if err != nil {
		return loader.ProbeModeIPTables, err.Error(), cgroupDir, pol
	}
	if pol, err = cfg.PodPolicy(pol, facts, capture.OSGroupLookup); err != nil {
		return loader.ProbeModeIPTables, err.Error(), cgroupDir, pol
	}
	if un := cfg.EBPFUnsupported(facts); len(un) > 0 {
		return loader.ProbeModeIPTables, "eBPF capture cannot do: " + strings.Join(un, "; "), cgroupDir, pol
	}
	checks, err := loader.Probe(loader.ProbeOptions{CgroupParent: cgroupDir})
	if err != nil {
		return loader.ProbeModeIPTables, "probe: " + err.Error(), cgroupDir, pol
	}
	for _, c := range checks {
		log.Debug("probe", zap.String("check", c.Name), zap.Bool("ok", c.OK), zap.String("detail", c.Detail))
	}
	d := loader.DecideMode(checks, loader.ProbeRequirements{Inbound: pol.InboundEnabled()})
	log.Debug("cgroup to capture", zap.String("cgroup", cgroupDir), zap.String("from", how), zap.Bool("ipv6", pol.IPv6))
	return d.Mode, d.Reason, cgroupDir, pol
}

// initEBPF captures the pod (outbound on the cgroup, inbound on the netns; pol has the netns's facts); on
// error nothing new stays attached.
func initEBPF(log *zap.Logger, o initOptions, cgroupDir, netnsPath string, pol capture.Policy) error {
	if netnsPath == "" {
		netnsPath = ownNetns
	}
	if err := ensureBPFFS(log, o.pinRoot); err != nil {
		return err
	}
	res, err := loader.CapturePod(loader.PodTarget{Cgroup: cgroupDir, Netns: netnsPath}, pol, loader.CaptureOptions{
		PinRoot: o.pinRoot, Load: loader.LoadOptions{MaxConns: o.maxConns}, FindListener: true,
	})
	if err != nil {
		return err
	}
	logPodCapture(log, res, pol)
	return nil
}
