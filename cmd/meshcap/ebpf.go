package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/hostfs"
	"github.com/meshcap/meshcap/pkg/iptables"
)

func init() { register(newEBPFCmd) }

// ownNetns is the caller's own network namespace: the default of --netns.
const ownNetns = "/proc/self/ns/net"

// newEBPFCmd groups the eBPF capture commands: attach and detach (outbound per cgroup, inbound per netns).
func newEBPFCmd(log *zap.Logger) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ebpf",
		Short: "Attach or detach eBPF capture: outbound on a cgroup, inbound on a network namespace (in-kernel replacement for istio-init's NAT rules)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newEBPFAttachCmd(log), newEBPFDetachCmd(log))
	return cmd
}

func newEBPFAttachCmd(log *zap.Logger) *cobra.Command {
	cfg := capture.Default()
	var cgroupDir, netnsPath, pinRoot string
	load := loader.LoadOptions{MaxConns: capture.DefaultMaxConnections}
	cmd := &cobra.Command{
		Use:   "attach --cgroup DIR [--netns PATH] [--fast-path] [capture flags]",
		Short: "Capture outbound TCP of every process in a cgroup v2 directory, and inbound TCP of a network namespace when -b is set",
		Long: `Attaches the outbound capture programs (cgroup/connect4 and connect6, sockops, cgroup/getsockopt,
cgroup/getpeername4 and 6) to a cgroup v2 directory. A TCP connect from a process in it (IPv4, or IPv4-mapped
::ffff:a.b.c.d from an IPv6 socket) is sent to the proxy on <-p> (at a 127/8 address derived from the destination
when it listens on 0.0.0.0, else 127.0.0.1) unless exempt, with the same decision order as istio's ISTIO_OUTPUT
chain: -o ports, then istio's lo rules (127.0.0.6 source; the -u/-g owners' own connections over lo go to -z),
then -u/-g owners, then loopback, then -x CIDRs, then -q ports, then -i CIDRs ('*' = all). The proxy learns the original destination with
getsockopt(SOL_IP, SO_ORIGINAL_DST), exactly as under iptables REDIRECT.

With -b ('*' or a port list) it also attaches inbound capture to the network namespace --netns (default: the
caller's own): an sk_lookup program hands new inbound TCP connections to the captured ports to the proxy's
listener on -z (15006), minus the -d ports (with -b '*') and the tunnel port -e, as istio's ISTIO_INBOUND chain.
The proxy registers its listener itself when it starts (meshcap proxy does); a proxy already running is found and
registered by this command. Without -b, inbound capture of that netns is removed if it was attached.

--fast-path (opt-in) also short-circuits the loopback hop between the app and the proxy: both ends of each
captured connection go into a SOCKHASH and an sk_msg program moves every write straight into the other end's
receive queue (no loopback TCP processing). The proxy must read those sockets with read()/recvmsg(): data moved
this way is invisible to splice(2), so a proxy that splices (HAProxy, for one) would hang. meshcap proxy detects it
per connection and copies with read/write; Envoy uses plain reads and writes. Off unless given; attaching again
without it turns it off for new connections.

Links and maps are pinned under --pin-dir (cgroup-<cgroup id>/ and netns-<netns cookie>/inbound/), so capture
stays after this command exits. Attaching again replaces the settings atomically. When --pin-dir is under
/sys/fs/bpf and no bpffs is mounted there, it is mounted (host mount namespace only).
Native IPv6 (to [::1]:<-p> outbound, to the sidecar's IPv6 listener inbound) is captured exactly where istio would
write ip6tables rules: when the addresses of --netns enable IPv6 as istio detects them (see --dual-stack).
Capture flags and their environment variables are istio-iptables' own. What eBPF capture cannot do yet is refused
with an error naming it, and nothing is attached: owner groups, -k, -c, -m TPROXY, --drop-invalid (docs/ipv6-dns.md).
--redirect-dns captures DNS to 15053 as istio's rules do, with the nameservers of this process's /etc/resolv.conf
(as istio-iptables reads them where it runs).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runEBPFAttach(log, cgroupDir, netnsPath, pinRoot, cfg, load)
		},
	}
	cmd.Flags().StringVar(&cgroupDir, "cgroup", "", "cgroup v2 directory to capture (required)")
	cmd.Flags().StringVar(&netnsPath, "netns", ownNetns, "the pod's network namespace (/var/run/netns/NAME or /proc/PID/ns/net): inbound capture, and whether IPv6 is captured")
	cmd.Flags().StringVar(&pinRoot, "pin-dir", loader.DefaultPinRoot, "bpffs directory where links and maps are pinned")
	cmd.Flags().Uint32Var(&load.MaxConns, "max-connections", load.MaxConns, "per-pod capacity of captured connections; beyond it new connects are refused (EPERM) and counted")
	cmd.Flags().BoolVar(&load.FastPath, "fast-path", false, "redirect app<->proxy data with sk_msg (the proxy must not use splice: see above)")
	bindCaptureFlags(cmd, &cfg)
	return cmd
}

// bindCaptureFlags registers istio-iptables' capture flags (-p -z -e -u -g -b -d -i -x -q -o ...) with their
// environment variables.
func bindCaptureFlags(cmd *cobra.Command, cfg *capture.Config) {
	capture.BindCaptureFlags(cmd.Flags(), cfg, nil)
}

func runEBPFAttach(log *zap.Logger, cgroupDir, netnsPath, pinRoot string, cfg capture.Config, load loader.LoadOptions) error {
	if cgroupDir == "" {
		return errors.New("ebpf attach: --cgroup is required")
	}
	if netnsPath == "" {
		return errors.New("ebpf attach: invalid --netns \"\": want /var/run/netns/NAME or /proc/PID/ns/net")
	}
	useHostViews(log, &pinRoot, &cgroupDir)
	cfg.ResolveDefaults()
	pol, err := cfg.Policy()
	if err == nil {
		err = pol.CheckEBPFLimits()
	}
	if err == nil {
		err = capture.CheckMaxConnections(load.MaxConns)
	}
	if err != nil {
		return fmt.Errorf("ebpf attach: %w", err)
	}
	// Check the netns before touching anything, so that a bad --netns leaves nothing half-applied.
	if _, err := loader.InboundCookie(netnsPath); err != nil {
		return fmt.Errorf("ebpf attach: invalid --netns %q: %w", netnsPath, err)
	}
	facts, err := iptables.EBPFFactsIn(netnsPath, cfg)
	if err != nil {
		return fmt.Errorf("ebpf attach: %w", err)
	}
	if un := cfg.EBPFUnsupported(facts); len(un) > 0 {
		return fmt.Errorf("ebpf attach: refused: eBPF capture cannot do %s for this pod (nothing attached; `meshcap iptables` and `meshcap init --mode auto` use istio's rules; docs/ipv6-dns.md)",
			strings.Join(un, "; "))
	}
	if pol, err = cfg.PodPolicy(pol, facts, capture.OSGroupLookup); err != nil {
		return fmt.Errorf("ebpf attach: %w", err)
	}
	if pol.OutboundNone || !pol.OutboundAll && len(pol.OutboundIncludeCIDRs) == 0 && len(pol.OutboundIncludePorts) == 0 {
		// Same meaning as istio-iptables (no -i: no outbound redirect), but easy to miss.
		log.Warn("no outbound TCP is captured: -i is empty and -q lists no port (use -i '*' to capture all), or ISTIO_OUTBOUND_OWNER_GROUPS is empty")
	}
	if err := ensureBPFFS(log, pinRoot); err != nil {
		return fmt.Errorf("ebpf attach: %w", err)
	}
	res, err := loader.CapturePod(loader.PodTarget{Cgroup: cgroupDir, Netns: netnsPath}, pol, loader.CaptureOptions{
		PinRoot: pinRoot, Load: load, FindListener: true,
	})
	if err != nil {
		return fmt.Errorf("ebpf attach: %w", err)
	}
	logPodCapture(log, res, pol)
	return nil
}

// logPodCapture says what CapturePod did.
func logPodCapture(log *zap.Logger, res *loader.PodCapture, pol capture.Policy) {
	if a := res.Outbound; a != nil {
		verb := "attached"
		if a.Replaced {
			verb = "replaced settings of"
		}
		log.Info(verb+" outbound capture",
			zap.String("cgroup", a.CgroupDir), zap.Uint64("cgroupID", a.CgroupID), zap.String("pinDir", a.PinDir),
			zap.Uint16("proxyPort", pol.ProxyPort), zap.Uint32s("proxyUIDs", pol.ProxyUIDs), zap.Uint32s("proxyGIDs", pol.ProxyGIDs),
			zap.Bool("outboundAll", pol.OutboundAll), zap.Stringers("include", pol.OutboundIncludeCIDRs),
			zap.Stringers("exclude", pol.OutboundExcludeCIDRs), zap.Bool("ipv6", pol.IPv6))
	}
	if res.InboundRemoved {
		log.Info("detached inbound capture (-b is empty)", zap.Uint64("netnsCookie", res.NetnsCookie))
	}
	info := res.Inbound
	if info == nil {
		return
	}
	log.Info("attached inbound capture", zap.Uint64("netnsCookie", info.NetnsCookie),
		zap.String("pinDir", info.PinDir), zap.Uint16("capturePort", info.CapturePort), zap.Uint16("tunnelPort", info.TunnelPort),
		zap.Bool("allPorts", info.AllPorts), zap.Uint16s("ports", info.Ports), zap.Bool("ipv6", info.IPv6),
		zap.Bool("listenerRegistered", info.Listener), zap.Bool("ipv6ListenerRegistered", info.Listener6))
	if !info.Listener {
		log.Warn("no proxy listens on the inbound capture port yet: captured inbound connections are refused until it starts and registers itself",
			zap.Uint16("port", info.CapturePort))
	}
}

// ensureBPFFS mounts bpffs at /sys/fs/bpf when the pin root lies under it and none is mounted there (see
// hostfs.EnsureBPFFS: never in a provably private mount namespace, where the pins would vanish with it).
func ensureBPFFS(log *zap.Logger, pinRoot string) error {
	mounted, err := hostfs.EnsureBPFFS(pinRoot, false)
	if mounted {
		log.Info("mounted a bpf filesystem (none was mounted)", zap.String("path", hostfs.BPFFSMount))
	}
	return err
}

func newEBPFDetachCmd(log *zap.Logger) *cobra.Command {
	var cgroupDir, netnsPath, pinRoot string
	cmd := &cobra.Command{
		Use:   "detach [--cgroup DIR] [--netns PATH]",
		Short: "Detach and unpin eBPF capture: of one cgroup (and a netns), of one netns, or everything",
		Long: `With --cgroup: detaches the outbound capture of that cgroup and the inbound capture of --netns (default: the
caller's own network namespace). With only --netns: detaches the inbound capture of that network namespace.
With neither: detaches every attachment pinned under --pin-dir, outbound and inbound, including those whose
cgroup or network namespace is gone. Pins are removed. Detaching what is not attached is not an error.
Connections already established are left alone; new ones go direct again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			useHostViews(log, &pinRoot, &cgroupDir)
			if cgroupDir == "" && !cmd.Flags().Changed("netns") {
				return detachEverything(log, pinRoot)
			}
			if netnsPath == "" {
				return errors.New("ebpf detach: invalid --netns \"\": want /var/run/netns/NAME or /proc/PID/ns/net")
			}
			res, err := loader.UncapturePod(loader.PodTarget{Cgroup: cgroupDir, Netns: netnsPath}, pinRoot)
			if err != nil {
				return fmt.Errorf("ebpf detach: %w", err)
			}
			logUncapture(log, cgroupDir, netnsPath, res)
			return nil
		},
	}
	cmd.Flags().StringVar(&cgroupDir, "cgroup", "", "cgroup v2 directory to detach (default: every attachment)")
	cmd.Flags().StringVar(&netnsPath, "netns", ownNetns, "network namespace whose inbound capture to detach (default with --cgroup: the caller's own)")
	cmd.Flags().StringVar(&pinRoot, "pin-dir", loader.DefaultPinRoot, "bpffs directory where links and maps are pinned")
	return cmd
}

func logUncapture(log *zap.Logger, cgroupDir, netnsPath string, res loader.PodUncapture) {
	if cgroupDir != "" {
		switch _, err := os.Stat(cgroupDir); {
		case res.Outbound:
			log.Info("detached outbound capture", zap.String("cgroup", cgroupDir))
		case errors.Is(err, os.ErrNotExist):
			log.Warn("cgroup does not exist: its attachment cannot be identified, nothing detached for it (meshcap ebpf detach with no arguments removes everything; attachments whose cgroup the kernel says is gone are pruned by it too)",
				zap.String("cgroup", cgroupDir))
		default:
			log.Info("outbound capture not attached", zap.String("cgroup", cgroupDir))
		}
	}
	if res.Inbound {
		log.Info("detached inbound capture", zap.String("netns", netnsPath))
	} else {
		log.Info("inbound capture not attached", zap.String("netns", netnsPath))
	}
}

// detachEverything removes every inbound and outbound attachment under pinRoot, under one hold of its lock.
func detachEverything(log *zap.Logger, pinRoot string) error {
	res, err := loader.UninstallAll(pinRoot)
	for _, c := range res.Inbound {
		log.Info("detached inbound capture", zap.Uint64("netnsCookie", c))
	}
	for _, d := range res.Outbound {
		log.Info("detached outbound capture", zap.String("pinDir", d))
	}
	if err != nil {
		return fmt.Errorf("ebpf detach: %w", err)
	}
	if len(res.Outbound) == 0 && len(res.Inbound) == 0 {
		log.Info("nothing attached", zap.String("pinDir", pinRoot))
	}
	return nil
}
