package main

import (
	"context"
	"errors"
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
}

func newInitCmd(log *zap.Logger) *cobra.Command {
	cfg := capture.Default()
	var ex capture.ExecOptions
	o := initOptions{mode: "auto", pinRoot: loader.DefaultPinRoot}
	cmd := &cobra.Command{
		Use:   "init [--mode auto|ebpf|iptables] [istio-iptables flags]",
		Short: "Set up capture for the pod this runs in (drop-in for istio-init)",
		Long: `Sets up traffic capture for the pod it runs in: its cgroup and its network namespace.

--mode auto (default) runs the feature probe (see 'meshcap probe') and uses eBPF when every feature the
requested capture needs is present and eBPF can capture everything istio's rules would for this pod: no IPv6
(as istio detects it from the pod's addresses and --dual-stack), no --redirect-dns, no owner groups, no -k/-c,
TPROXY or --drop-invalid (docs/ipv6-dns.md); otherwise it applies istio-iptables' exact rules. The choice and the
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
	mode, reason, cgroupDir := decideInitMode(log, o, cfg, pol, ex.NetworkNamespace)
	log.Info("capture mode chosen", zap.String("mode", initModeName(mode, cfg)), zap.String("reason", reason),
		zap.String("cgroup", cgroupDir), zap.String("requested", o.mode))
	if mode == loader.ProbeModeEBPF {
		err := initEBPF(log, o, cgroupDir, ex.NetworkNamespace, pol)
		if err == nil {
			log.Info("capture set up", zap.String("mode", loader.ProbeModeEBPF))
			return nil
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
	if err := runIptables(ctx, log, cmd, cfg, ex); err != nil {
		return err
	}
	log.Info("capture set up", zap.String("mode", fallbackMode(cfg)))
	return nil
}

// decideInitMode runs the probe and returns the mode (ebpf or iptables), why, and the target cgroup.
func decideInitMode(log *zap.Logger, o initOptions, cfg capture.Config, pol capture.Policy, netnsPath string) (mode, reason, cgroupDir string) {
	cgroupDir, how, err := initTarget(o)
	if err != nil {
		return loader.ProbeModeIPTables, "no cgroup to attach to: " + err.Error(), ""
	}
	un, err := iptables.EBPFUnsupportedIn(netnsPath, cfg)
	if err != nil {
		return loader.ProbeModeIPTables, err.Error(), cgroupDir
	}
	if len(un) > 0 {
		return loader.ProbeModeIPTables, "eBPF capture cannot do: " + strings.Join(un, "; "), cgroupDir
	}
	checks, err := loader.Probe(loader.ProbeOptions{CgroupParent: cgroupDir})
	if err != nil {
		return loader.ProbeModeIPTables, "probe: " + err.Error(), cgroupDir
	}
	for _, c := range checks {
		log.Debug("probe", zap.String("check", c.Name), zap.Bool("ok", c.OK), zap.String("detail", c.Detail))
	}
	d := loader.DecideMode(checks, loader.ProbeRequirements{Inbound: pol.InboundEnabled()})
	log.Debug("cgroup to capture", zap.String("cgroup", cgroupDir), zap.String("from", how))
	return d.Mode, d.Reason, cgroupDir
}

// initEBPF attaches outbound capture to the cgroup and inbound capture to the netns; on error nothing stays attached.
func initEBPF(log *zap.Logger, o initOptions, cgroupDir, netnsPath string, pol capture.Policy) error {
	a, err := loader.Attach(cgroupDir, pol, o.pinRoot, loader.LoadOptions{})
	if err != nil {
		return fmt.Errorf("attach outbound: %w", err)
	}
	log.Info("attached outbound capture", zap.String("cgroup", a.CgroupDir), zap.Uint64("cgroupID", a.CgroupID),
		zap.String("pinDir", a.PinDir), zap.Bool("replaced", a.Replaced))
	if !pol.InboundEnabled() {
		return nil
	}
	if netnsPath == "" {
		netnsPath = "/proc/self/ns/net"
	}
	info, err := loader.AttachInbound(netnsPath, pol, loader.InboundOptions{PinRoot: o.pinRoot, FindListener: true, Cgroup: cgroupDir})
	if err != nil {
		if !a.Replaced {
			if _, derr := loader.Detach(cgroupDir, o.pinRoot); derr != nil {
				err = errors.Join(err, fmt.Errorf("undo outbound attach: %w", derr))
			}
		}
		return err
	}
	log.Info("attached inbound capture", zap.Uint64("netnsCookie", info.NetnsCookie), zap.String("pinDir", info.PinDir),
		zap.Bool("listenerRegistered", info.Listener))
	if !info.Listener {
		log.Warn("no proxy listener registered yet on the inbound capture port: captured inbound connections are refused until the proxy registers it",
			zap.Uint16("port", info.CapturePort))
	}
	return nil
}
