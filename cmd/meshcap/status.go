package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/hostfs"
	"github.com/meshcap/meshcap/pkg/iptables"
)

func init() { register(newStatusCmd) }

// statusReport is what `meshcap status` shows: the capture mode of one network namespace (and cgroup), then every
// attachment pinned under the pin root.
type statusReport struct {
	Mode       string `json:"mode"`       // ebpf, iptables, nftables or none, for --netns / --cgroup
	ModeReason string `json:"modeReason"` // what decided it
	*loader.Status
	Inbound    []loader.InboundInfo `json:"inbound"` // inbound (sk_lookup) attachments, one per netns
	InboundErr string               `json:"inboundError,omitempty"`
}

func newStatusCmd(log *zap.Logger) *cobra.Command {
	var pinRoot, netnsPath, cgroupDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the capture mode, attached cgroups and network namespaces with their programs, and pinned maps with entry counts",
		Long: `The first line is the capture mode of the network namespace --netns (default: this process's own) and the
cgroup --cgroup (default: this process's own unless --netns is given):
  mode: ebpf      that netns has inbound capture pinned, or that cgroup (or an ancestor) has outbound capture attached
  mode: iptables  ISTIO_* chains exist in that netns (iptables-legacy-save / iptables-nft-save)
  mode: nftables  istio's nftables tables (inet istio-proxy-nat/mangle/raw) exist in that netns; listed with their chains
  mode: none      neither
Then every attachment pinned under --pin-dir: outbound per cgroup (programs, maps with entry counts) and inbound
per network namespace (settings, listener registration, counters).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			useHostViews(log, &pinRoot, &cgroupDir)
			st, err := loader.GetStatus(pinRoot)
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			rep := statusReport{Status: st}
			inb, ierr := loader.ListInbound(pinRoot)
			rep.Inbound = inb
			if ierr != nil {
				rep.InboundErr = ierr.Error()
			}
			rep.Mode, rep.ModeReason = captureMode(cmd.Context(), pinRoot, netnsPath, cgroupDir, cmd.Flags().Changed("netns"))
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			printStatus(cmd.OutOrStdout(), &rep)
			return nil
		},
	}
	cmd.Flags().StringVar(&pinRoot, "pin-dir", loader.DefaultPinRoot, "bpffs directory where links and maps are pinned")
	cmd.Flags().StringVar(&netnsPath, "netns", ownNetns, "network namespace whose capture mode to show")
	cmd.Flags().StringVar(&cgroupDir, "cgroup", "", "cgroup v2 directory whose outbound capture counts for the mode (default: this process's own, unless --netns is given)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

// captureMode decides the mode line. eBPF wins over iptables: both at once is a misconfiguration, and eBPF
// capture acts first (connect4 before any netfilter hook; sk_lookup before the REDIRECTed socket lookup).
func captureMode(ctx context.Context, pinRoot, netnsPath, cgroupDir string, netnsGiven bool) (mode, reason string) {
	if info, err := loader.InboundStatus(netnsPath, pinRoot); err == nil {
		return "ebpf", fmt.Sprintf("inbound capture pinned for this netns (cookie %d)", info.NetnsCookie)
	}
	if cgroupDir == "" && !netnsGiven {
		cgroupDir, _ = loader.OwnCgroupDir()
	}
	if cgroupDir != "" {
		if dir, ok := outboundAttachedAbove(pinRoot, cgroupDir); ok {
			return "ebpf", "outbound capture attached to cgroup " + dir
		}
	}
	runner := iptables.ExecRunner{}
	if netnsPath != ownNetns {
		runner = iptables.NetnsRunner(netnsPath)
	}
	if chains := istioChains(ctx, runner); len(chains) > 0 {
		return "iptables", "ISTIO chains in this netns: " + strings.Join(chains, ", ")
	}
	if tables := istioNftTables(ctx, netnsPath); len(tables) > 0 {
		return "nftables", "istio nftables tables in this netns: " + strings.Join(tables, "; ")
	}
	return "none", "no eBPF capture pinned for this netns or cgroup, no ISTIO iptables chains, no istio nftables tables"
}

// outboundAttachedAbove reports the first of dir and its ancestors (up to the cgroup2 root) with an outbound
// attachment pinned under pinRoot.
func outboundAttachedAbove(pinRoot, dir string) (string, bool) {
	// Walk up while still on the cgroup2 filesystem: that bounds the walk at its root in the local view and in the
	// host's view alike (/proc/self/fd/N/... under ip netns exec).
	for d := filepath.Clean(dir); hostfs.IsCgroup2(d); d = filepath.Dir(d) {
		if pd, err := loader.PinDir(d, pinRoot); err == nil {
			if _, err := os.Stat(pd); err == nil {
				return d, true
			}
		}
	}
	return "", false
}

// istioChains lists "table/chain" for the ISTIO* chains that iptables-legacy-save or iptables-nft-save show (IPv4
// and IPv6). Saving only reads: it creates no table. Missing binaries count as no chains.
func istioChains(ctx context.Context, r iptables.Runner) []string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	seen := map[string]bool{}
	var out []string
	for _, save := range []string{"iptables-legacy-save", "iptables-nft-save", "ip6tables-legacy-save", "ip6tables-nft-save"} {
		text, err := r.Run(ctx, "", save)
		if err != nil && text == "" {
			continue
		}
		st := iptables.ParseSave(text)
		for _, table := range []string{"raw", "mangle", "nat", "filter"} {
			for chain := range st.Chains[table] {
				if k := table + "/" + chain; !seen[k] {
					seen[k] = true
					out = append(out, k)
				}
			}
		}
	}
	return out
}

func printStatus(w io.Writer, rep *statusReport) {
	st := rep.Status
	fmt.Fprintf(w, "mode: %s\n", rep.Mode)
	fmt.Fprintf(w, "  (%s)\n", rep.ModeReason)
	fmt.Fprintf(w, "pin dir %s: %d cgroup(s) with outbound capture, %d netns with inbound capture\n",
		st.PinRoot, len(st.Attachments), len(rep.Inbound))
	for _, a := range st.Attachments {
		path := a.CgroupPath
		if path == "" {
			path = "(cgroup not found from here: gone, or outside this view; `meshcap ebpf detach` with no arguments cleans up)"
		}
		fmt.Fprintf(w, "\ncgroup %s (id %d), proxy port %d, pins %s\n", path, a.CgroupID, a.ProxyPort, a.PinDir)
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  PROGRAM\tLINK\tPROG\tSTATE")
		for _, p := range a.Programs {
			state := "attached"
			switch {
			case p.Err != "":
				state = "error: " + p.Err
			case p.CgroupID != a.CgroupID:
				state = fmt.Sprintf("attached to cgroup id %d", p.CgroupID)
			}
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%s\n", p.Hook, p.LinkID, p.ProgID, state)
		}
		fmt.Fprintln(tw, "  MAP\tTYPE\tENTRIES\tMAX")
		for _, m := range a.Maps {
			if m.Err != "" {
				fmt.Fprintf(tw, "  %s\t-\t-\terror: %s\n", m.Name, m.Err)
				continue
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\n", m.Name, m.Type, m.Entries, m.MaxEntries)
		}
		tw.Flush()
		printCaptureStats(w, a)
	}
	for _, in := range rep.Inbound {
		state := "attached"
		if !in.Attached {
			state = "netns gone (`meshcap ebpf detach` cleans up)"
		}
		fmt.Fprintf(w, "\nnetns cookie %d: inbound sk_lookup %s, pins %s\n", in.NetnsCookie, state, in.PinDir)
		ports := "-b " + joinPorts(in.Ports)
		if in.AllPorts {
			ports = "-b '*'"
			if len(in.Ports) > 0 {
				ports += " -d " + joinPorts(in.Ports)
			}
		}
		fmt.Fprintf(w, "  capture port %d, tunnel port %d, %s, IPv6 %s\n", in.CapturePort, in.TunnelPort, ports, onOff(in.IPv6))
		if in.Listener {
			fmt.Fprintf(w, "  proxy listener registered (socket cookie %d; an IPv6 one: %v)\n", in.ListenerCookie, in.Listener6)
		} else {
			fmt.Fprintf(w, "  no proxy listener registered: captured connections are refused\n")
		}
		if in.SelfRegister {
			fmt.Fprintf(w, "  the proxy uid/gid's listener on the capture port is registered by the kernel when it listens\n")
		}
		s := in.Stats
		fmt.Fprintf(w, "  steered %d, passed loopback %d, passed port %d, refused no listener %d, refused assign %d\n",
			s.Steered, s.PassLoopback, s.PassPort, s.DropNoListener, s.DropAssign)
		fmt.Fprintf(w, "  listeners registered by the kernel %d, binds of non-exempt owners %d, SO_ORIGINAL_DST answered %d\n",
			s.Registered, s.RefusedOwner, s.OrigDst)
	}
	if rep.InboundErr != "" {
		fmt.Fprintf(w, "\ninbound: %s\n", rep.InboundErr)
	}
}

func joinPorts(ports []uint16) string {
	if len(ports) == 0 {
		return "(none)"
	}
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ",")
}

// printCaptureStats prints an attachment's outbound counters, one line per pod (config key).
func printCaptureStats(w io.Writer, a loader.AttachmentStatus) {
	if a.StatsErr != "" {
		fmt.Fprintf(w, "  counters: error: %s\n", a.StatsErr)
	}
	for _, key := range slices.Sorted(maps.Keys(a.Stats)) {
		s := a.Stats[key]
		who := "pod"
		if key != 0 {
			who = fmt.Sprintf("netns cookie %d", key)
		}
		fmt.Fprintf(w, "  %s: captured %d, refused at capacity %d, in use %d of %d (proxy-side entries %d)\n",
			who, s.Captured, s.RefusedFull, s.ConnsInUse, s.MaxConns, s.TuplesInUse)
		fmt.Fprintf(w, "    exempt: port (-o) %d, owner (-u/-g) %d, loopback %d, CIDR (-x) %d, not included (-i/-q) %d",
			s.ExemptPort, s.ExemptOwner, s.ExemptLoopback, s.ExemptCIDR, s.NotIncluded)
		if s.TupleLost > 0 {
			fmt.Fprintf(w, "; destinations lost (table full) %d", s.TupleLost)
		}
		fmt.Fprintln(w)
	}
}

func onOff(b bool) string {
	if b {
		return "captured"
	}
	return "not captured (istio would write no ip6tables rules)"
}
