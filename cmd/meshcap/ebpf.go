package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/capture"
)

func init() { register(newEBPFCmd) }

// newEBPFCmd groups the eBPF capture commands: attach and detach per cgroup.
func newEBPFCmd(log *zap.Logger) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ebpf",
		Short: "Attach or detach eBPF outbound capture on a cgroup (in-kernel replacement for istio-init's NAT rules)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newEBPFAttachCmd(log), newEBPFDetachCmd(log))
	return cmd
}

func newEBPFAttachCmd(log *zap.Logger) *cobra.Command {
	cfg := capture.Default()
	var cgroupDir, pinRoot string
	cmd := &cobra.Command{
		Use:   "attach --cgroup DIR [capture flags]",
		Short: "Capture outbound TCP of every process in a cgroup v2 directory",
		Long: `Attaches the outbound capture programs (cgroup/connect4, sockops, cgroup/getsockopt, cgroup/getpeername4)
to a cgroup v2 directory. A TCP connect from a process in it is sent to 127.0.0.1:<-p> unless exempt, with the
same decision order as istio's ISTIO_OUTPUT chain: -o ports, then -u/-g owners, then loopback, then -x CIDRs,
then -q ports, then -i CIDRs ('*' = all). The proxy learns the original destination with
getsockopt(SOL_IP, SO_ORIGINAL_DST), exactly as under iptables REDIRECT.

Links and maps are pinned under --pin-dir/cgroup-<cgroup id>, so capture stays after this command exits.
Attaching a cgroup that is already attached replaces its settings atomically.
Capture flags and their environment variables are istio-iptables' own.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runEBPFAttach(log, cgroupDir, pinRoot, cfg)
		},
	}
	cmd.Flags().StringVar(&cgroupDir, "cgroup", "", "cgroup v2 directory to capture (required)")
	cmd.Flags().StringVar(&pinRoot, "pin-dir", loader.DefaultPinRoot, "bpffs directory where links and maps are pinned")
	bindCaptureFlags(cmd, &cfg)
	return cmd
}

// bindCaptureFlags registers istio-iptables' capture flags (-p -z -e -u -g -b -d -i -x -q -o ...) with their
// environment variables.
func bindCaptureFlags(cmd *cobra.Command, cfg *capture.Config) {
	capture.BindCaptureFlags(cmd.Flags(), cfg, nil)
}

func runEBPFAttach(log *zap.Logger, cgroupDir, pinRoot string, cfg capture.Config) error {
	if cgroupDir == "" {
		return errors.New("ebpf attach: --cgroup is required")
	}
	cfg.ResolveDefaults()
	pol, err := cfg.Policy()
	if err != nil {
		return fmt.Errorf("ebpf attach: %w", err)
	}
	warnUnsupported(log, cfg)
	a, err := loader.Attach(cgroupDir, pol, pinRoot, loader.LoadOptions{})
	if err != nil {
		return fmt.Errorf("ebpf attach: %w", err)
	}
	verb := "attached"
	if a.Replaced {
		verb = "replaced settings of"
	}
	log.Info(verb+" outbound capture",
		zap.String("cgroup", a.CgroupDir), zap.Uint64("cgroupID", a.CgroupID), zap.String("pinDir", a.PinDir),
		zap.Uint16("proxyPort", pol.ProxyPort), zap.Uint32s("proxyUIDs", pol.ProxyUIDs), zap.Uint32s("proxyGIDs", pol.ProxyGIDs),
		zap.Bool("outboundAll", pol.OutboundAll), zap.Stringers("include", pol.OutboundIncludeCIDRs),
		zap.Stringers("exclude", pol.OutboundExcludeCIDRs))
	return nil
}

// warnUnsupported names the istio settings that the eBPF outbound programs do not implement (they are accepted so
// that istio-init argument lists work unchanged).
func warnUnsupported(log *zap.Logger, c capture.Config) {
	for _, s := range []struct {
		on   bool
		what string
	}{
		{c.KubeVirtInterfaces != "", "-k/--kube-virt-interfaces"},
		{c.ExcludeInterfaces != "", "-c/--istio-exclude-interfaces"},
		{c.RedirectDNS || c.CaptureAllDNS, "DNS capture (--redirect-dns/--capture-all-dns)"},
		{c.InboundInterceptionMode == "TPROXY", "-m TPROXY"},
		{c.OwnerGroupsInclude != "" && c.OwnerGroupsInclude != "*", "ISTIO_OUTBOUND_OWNER_GROUPS"},
		{c.OwnerGroupsExclude != "", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"},
		{c.InboundPortsInclude != "", "-b/--istio-inbound-ports (inbound capture is attached per netns, not by ebpf attach)"},
	} {
		if s.on {
			log.Warn("not applied by eBPF outbound capture: " + s.what)
		}
	}
}

func newEBPFDetachCmd(log *zap.Logger) *cobra.Command {
	var cgroupDir, pinRoot string
	cmd := &cobra.Command{
		Use:   "detach [--cgroup DIR]",
		Short: "Detach and unpin eBPF outbound capture of one cgroup, or of every cgroup when --cgroup is not given",
		Long: `Detaches the outbound capture of --cgroup (or of every attachment pinned under --pin-dir, including those whose
cgroup is gone) and removes the pins. Detaching what is not attached is not an error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cgroupDir == "" {
				removed, err := loader.DetachAll(pinRoot)
				for _, d := range removed {
					log.Info("detached outbound capture", zap.String("pinDir", d))
				}
				if err != nil {
					return fmt.Errorf("ebpf detach: %w", err)
				}
				if len(removed) == 0 {
					log.Info("nothing attached", zap.String("pinDir", pinRoot))
				}
				return nil
			}
			was, err := loader.Detach(cgroupDir, pinRoot)
			if err != nil {
				return fmt.Errorf("ebpf detach: %w", err)
			}
			if was {
				log.Info("detached outbound capture", zap.String("cgroup", cgroupDir))
			} else {
				log.Info("not attached", zap.String("cgroup", cgroupDir))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&cgroupDir, "cgroup", "", "cgroup v2 directory to detach (default: every attachment)")
	cmd.Flags().StringVar(&pinRoot, "pin-dir", loader.DefaultPinRoot, "bpffs directory where links and maps are pinned")
	return cmd
}
