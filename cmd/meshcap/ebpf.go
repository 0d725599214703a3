package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/capture"
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
	var fastPath bool
	cmd := &cobra.Command{
		Use:   "attach --cgroup DIR [--netns PATH] [--fast-path] [capture flags]",
		Short: "Capture outbound TCP of every process in a cgroup v2 directory, and inbound TCP of a network namespace when -b is set",
		Long: `Attaches the outbound capture programs (cgroup/connect4, sockops, cgroup/getsockopt, cgroup/getpeername4)
to a cgroup v2 directory. A TCP connect from a process in it is sent to 127.0.0.1:<-p> unless exempt, with the
same decision order as istio's ISTIO_OUTPUT chain: -o ports, then -u/-g owners, then loopback, then -x CIDRs,
then -q ports, then -i CIDRs ('*' = all). The proxy learns the original destination with
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
Capture flags and their environment variables are istio-iptables' own. What eBPF capture cannot do yet is refused
with an error naming it, and nothing is attached: IPv6 in a pod where istio would write ip6tables rules (its IPv6
addresses in --netns, as istio detects them, see --dual-stack), --redirect-dns, owner groups, -k, -c, -m TPROXY,
--drop-invalid (docs/ipv6-dns.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runEBPFAttach(log, cgroupDir, netnsPath, pinRoot, cfg, fastPath)
		},
	}
	cmd.Flags().StringVar(&cgroupDir, "cgroup", "", "cgroup v2 directory to capture (required)")
	cmd.Flags().StringVar(&netnsPath, "netns", ownNetns, "the pod's network namespace (/var/run/netns/NAME or /proc/PID/ns/net): inbound capture, and the IPv6 check")
	cmd.Flags().StringVar(&pinRoot, "pin-dir", loader.DefaultPinRoot, "bpffs directory where links and maps are pinned")
	cmd.Flags().BoolVar(&fastPath, "fast-path", false, "redirect app<->proxy data with sk_msg (the proxy must not use splice: see above)")
	bindCaptureFlags(cmd, &cfg)
	return cmd
}

// bindCaptureFlags registers istio-iptables' capture flags (-p -z -e -u -g -b -d -i -x -q -o ...) with their
// environment variables.
func bindCaptureFlags(cmd *cobra.Command, cfg *capture.Config) {
	capture.BindCaptureFlags(cmd.Flags(), cfg, nil)
}

func runEBPFAttach(log *zap.Logger, cgroupDir, netnsPath, pinRoot string, cfg capture.Config, fastPath bool) error {
	if cgroupDir == "" {
		return errors.New("ebpf attach: --cgroup is required")
	}
	if netnsPath == "" {
		return errors.New("ebpf attach: invalid --netns \"\": want /var/run/netns/NAME or /proc/PID/ns/net")
	}
	useHostViews(log, &pinRoot, &cgroupDir)
	cfg.ResolveDefaults()
	pol, err := cfg.Policy()
	if err != nil {
		return fmt.Errorf("ebpf attach: %w", err)
	}
	// Check the netns before touching anything, so that a bad --netns leaves nothing half-applied.
	if _, err := loader.InboundCookie(netnsPath); err != nil {
		return fmt.Errorf("ebpf attach: invalid --netns %q: %w", netnsPath, err)
	}
	if un, err := iptables.EBPFUnsupportedIn(netnsPath, cfg); err != nil {
		return fmt.Errorf("ebpf attach: %w", err)
	} else if len(un) > 0 {
		return fmt.Errorf("ebpf attach: refused: eBPF capture cannot do %s for this pod (nothing attached; `meshcap iptables` and `meshcap init --mode auto` use istio's rules; docs/ipv6-dns.md)",
			strings.Join(un, "; "))
	}
	if !pol.OutboundAll && len(pol.OutboundIncludeCIDRs) == 0 && len(pol.OutboundIncludePorts) == 0 {
		// Same meaning as istio-iptables (no -i: no outbound redirect), but easy to miss.
		log.Warn("no outbound TCP is captured: -i is empty and -q lists no port (use -i '*' to capture all)")
	}
	if err := ensureBPFFS(log, pinRoot); err != nil {
		return fmt.Errorf("ebpf attach: %w", err)
	}
	a, err := loader.Attach(cgroupDir, pol, pinRoot, loader.LoadOptions{FastPath: fastPath})
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
		zap.Bool("outboundAll", pol.OutboundAll), zap.Bool("fastPath", fastPath), zap.Stringers("include", pol.OutboundIncludeCIDRs),
		zap.Stringers("exclude", pol.OutboundExcludeCIDRs))

	if !pol.InboundEnabled() {
		// -b empty: no inbound capture in this netns (istio adds no PREROUTING jump). Remove one left from before.
		if _, err := loader.InboundStatus(netnsPath, pinRoot); err == nil {
			if err := loader.DetachInbound(netnsPath, pinRoot); err != nil {
				return fmt.Errorf("ebpf attach: -b is empty: %w", err)
			}
			log.Info("detached inbound capture (-b is empty)", zap.String("netns", netnsPath))
		}
		return nil
	}
	info, err := loader.AttachInbound(netnsPath, pol, loader.InboundOptions{PinRoot: pinRoot, FindListener: true, Cgroup: cgroupDir})
	if err != nil {
		if !a.Replaced {
			if _, derr := loader.Detach(cgroupDir, pinRoot); derr != nil {
				err = errors.Join(err, fmt.Errorf("undo outbound attach: %w", derr))
			}
		}
		return fmt.Errorf("ebpf attach: %w", err)
	}
	log.Info("attached inbound capture", zap.String("netns", netnsPath), zap.Uint64("netnsCookie", info.NetnsCookie),
		zap.String("pinDir", info.PinDir), zap.Uint16("capturePort", info.CapturePort), zap.Uint16("tunnelPort", info.TunnelPort),
		zap.Bool("allPorts", info.AllPorts), zap.Uint16s("ports", info.Ports), zap.Bool("listenerRegistered", info.Listener))
	if !info.Listener {
		log.Info("no proxy listens on the inbound capture port yet: captured inbound connections are refused until it starts and registers itself",
			zap.Uint16("port", info.CapturePort))
	}
	return nil
}

// ensureBPFFS mounts bpffs at /sys/fs/bpf when the pin root lies under it and nothing is mounted there, as users
// expect from a root CLI (systemd normally mounts it). Only in the host's mount namespace (that of PID 1): in a
// private one (`ip netns exec`, a container without the host's /sys/fs/bpf) the new instance, and every pin in it,
// would vanish with that namespace, silently detaching the capture. There the loader's error explains instead.
func ensureBPFFS(log *zap.Logger, pinRoot string) error {
	const mnt = "/sys/fs/bpf"
	clean := filepath.Clean(pinRoot)
	if clean != mnt && !strings.HasPrefix(clean, mnt+"/") {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil || st.Type == unix.BPF_FS_MAGIC {
		return nil // absent (the loader reports it) or already bpffs
	}
	if os.Geteuid() != 0 {
		return nil
	}
	self, err1 := os.Readlink("/proc/self/ns/mnt")
	init, err2 := os.Readlink("/proc/1/ns/mnt")
	if err1 != nil || err2 != nil || self != init {
		return fmt.Errorf("no bpf filesystem at %s, and this process is not in the host's mount namespace, where one would have to be mounted (mount -t bpf bpf %s on the host, or bind it in)", mnt, mnt)
	}
	if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", mnt, err)
	}
	log.Info("mounted a bpf filesystem (none was mounted)", zap.String("path", mnt))
	return nil
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
			var errs []error
			if cgroupDir != "" {
				was, err := loader.Detach(cgroupDir, pinRoot)
				switch {
				case err != nil:
					errs = append(errs, err)
				case was:
					log.Info("detached outbound capture", zap.String("cgroup", cgroupDir))
				default:
					log.Info("outbound capture not attached", zap.String("cgroup", cgroupDir))
				}
			}
			_, serr := loader.InboundStatus(netnsPath, pinRoot)
			if err := loader.DetachInbound(netnsPath, pinRoot); err != nil {
				errs = append(errs, err)
			} else if serr == nil {
				log.Info("detached inbound capture", zap.String("netns", netnsPath))
			} else {
				log.Info("inbound capture not attached", zap.String("netns", netnsPath))
			}
			if err := errors.Join(errs...); err != nil {
				return fmt.Errorf("ebpf detach: %w", err)
			}
			_ = os.Remove(pinRoot) // only when nothing else is pinned there
			return nil
		},
	}
	cmd.Flags().StringVar(&cgroupDir, "cgroup", "", "cgroup v2 directory to detach (default: every attachment)")
	cmd.Flags().StringVar(&netnsPath, "netns", ownNetns, "network namespace whose inbound capture to detach (default with --cgroup: the caller's own)")
	cmd.Flags().StringVar(&pinRoot, "pin-dir", loader.DefaultPinRoot, "bpffs directory where links and maps are pinned")
	return cmd
}

// detachEverything removes every inbound and outbound attachment under pinRoot (inbound first: DetachAll removes
// the pin root once it is empty).
func detachEverything(log *zap.Logger, pinRoot string) error {
	cookies, ierr := loader.DetachAllInbound(pinRoot)
	for _, c := range cookies {
		log.Info("detached inbound capture", zap.Uint64("netnsCookie", c))
	}
	removed, oerr := loader.DetachAll(pinRoot)
	for _, d := range removed {
		log.Info("detached outbound capture", zap.String("pinDir", d))
	}
	if err := errors.Join(ierr, oerr); err != nil {
		return fmt.Errorf("ebpf detach: %w", err)
	}
	if len(removed) == 0 && len(cookies) == 0 {
		log.Info("nothing attached", zap.String("pinDir", pinRoot))
	}
	return nil
}
