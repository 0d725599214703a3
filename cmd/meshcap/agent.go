package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/cni"
	"github.com/meshcap/meshcap/pkg/iptables"
)

func init() { register(newAgentCmd) }

type agentOptions struct {
	cgroup, pinRoot, stateDir string
	metricsAddr               string
	maxConns                  uint32
	uninstall                 bool
	cniBinDir, cniConfDir     string
	resync                    time.Duration
}

// newAgentCmd is DaemonSet mode. Design:
//   - one outbound attachment at the pods' cgroup root (loader.AttachAgent), pinned under --pin-dir, with no
//     netns-0 ("any netns") settings: a pod is captured only once its netns cookie has settings (enrollment);
//   - meshcap-cni enrolls at ADD (loader.EnrollNetns under the pod's netns cookie; inbound sk_lookup in the pod's
//     netns when -b is set) and records the pod in --state-dir; DEL removes both. It finds the pins through
//     agent.json, which stays in place while the agent restarts, so pods are enrolled during a restart too;
//   - a restart or upgrade re-attaches with link updates and keeps every map (settings and connection state), so
//     no established connection loses its state and no new one of an enrolled pod goes uncaptured; it then
//     re-applies every recorded enrollment in place (a no-op for pods already programmed) and unenrolls pods whose
//     netns is gone;
//   - every --resync the records are reconciled again, and the proxy listeners of pods with inbound capture are
//     registered (a pod's proxy starts after CNI ADD has attached its inbound capture);
//   - --uninstall detaches and unpins everything (outbound and inbound), removes the records, agent.json and
//     meshcap-cni from the CNI configuration.
func newAgentCmd(log *zap.Logger) *cobra.Command {
	o := agentOptions{pinRoot: loader.DefaultPinRoot, stateDir: cni.DefaultStateDir,
		cniBinDir: "/host/opt/cni/bin", cniConfDir: "/host/etc/cni/net.d", resync: 30 * time.Second,
		maxConns: capture.DefaultMaxConnections}
	cmd := &cobra.Command{
		Use:   "agent --cgroup DIR",
		Short: "Node agent (DaemonSet mode): capture enrolled pods from one attachment at a cgroup root",
		Long: `Runs in the foreground. Attaches the outbound capture programs once at --cgroup (the pods' cgroup root,
for example the kubepods cgroup), pinned under --pin-dir, and captures only the pods that meshcap-cni enrolled
(by network-namespace cookie). Stopping the agent (SIGTERM) leaves capture in place; starting it again upgrades
the programs in place and keeps every map, so a restart or upgrade drops no connection.

--uninstall removes everything: every outbound and inbound attachment pinned under --pin-dir, the enrollment
records in --state-dir, and meshcap-cni from the CNI configuration.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.uninstall {
				return agentUninstall(log, o)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runAgent(ctx, log, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.cgroup, "cgroup", "", "cgroup v2 directory to attach at (the pods' root, e.g. <cgroup2>/kubepods.slice)")
	f.StringVar(&o.pinRoot, "pin-dir", o.pinRoot, "bpffs directory for pinned links and maps")
	f.StringVar(&o.pinRoot, "pin-root", o.pinRoot, "same as --pin-dir")
	_ = f.MarkDeprecated("pin-root", "use --pin-dir")
	f.StringVar(&o.stateDir, "state-dir", o.stateDir, "meshcap-cni's enrollment records (its state_dir)")
	f.DurationVar(&o.resync, "resync", o.resync, "interval of the reconcile loop (0: only at start)")
	f.Uint32Var(&o.maxConns, "max-connections", o.maxConns, "per-pod capacity of captured connections; beyond it a pod's new connects are refused (EPERM) and counted")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus /metrics (every enrolled pod's capture counters) on this address, e.g. 127.0.0.1:15090 (default off)")
	f.BoolVar(&o.uninstall, "uninstall", false, "detach and unpin everything, remove the records and meshcap-cni from the CNI configuration, exit")
	f.StringVar(&o.cniBinDir, "cni-bin-dir", o.cniBinDir, "CNI bin dir (for --uninstall)")
	f.StringVar(&o.cniConfDir, "cni-conf-dir", o.cniConfDir, "CNI conf dir (for --uninstall)")
	cmd.AddCommand(newAgentInstallCNICmd(log))
	return cmd
}

func runAgent(ctx context.Context, log *zap.Logger, o agentOptions) error {
	if o.cgroup == "" {
		return errors.New("agent: --cgroup is required")
	}
	if o.resync < 0 {
		return fmt.Errorf("agent: invalid --resync %s: want >= 0", o.resync)
	}
	if err := capture.CheckMaxConnections(o.maxConns); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	// agent.json is read by meshcap-cni, which runs with another working directory.
	for _, p := range []*string{&o.cgroup, &o.pinRoot, &o.stateDir} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		*p = abs
	}
	ok, err := agentCanUseEBPF(log, o.cgroup)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if !ok {
		log.Warn("eBPF unavailable on this node: the agent stays idle; use per-pod `meshcap init` (iptables fallback)")
		<-ctx.Done()
		return nil
	}
	if err := ensureBPFFS(log, o.pinRoot); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a, err := loader.AttachAgent(o.cgroup, o.pinRoot, loader.LoadOptions{MaxConns: agentTableSize(o.maxConns)})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if a.Replaced {
		log.Info("re-attached at cgroup root: programs updated in place, links and maps kept",
			zap.String("cgroup", o.cgroup), zap.String("pinDir", a.PinDir), zap.Int("enrolledNetns", a.Enrolled))
	} else {
		log.Info("attached at cgroup root", zap.String("cgroup", o.cgroup), zap.String("pinDir", a.PinDir))
	}
	if a.ClearedAnyNetns {
		log.Warn("removed netns-0 settings (per-pod mode) from the attachment: only enrolled pods are captured", zap.String("pinDir", a.PinDir))
	}
	info := cni.AgentInfo{CgroupDir: o.cgroup, PinDir: a.PinDir, PinRoot: o.pinRoot, MaxConnections: o.maxConns}
	if err := writeAgentInfo(o.stateDir, info); err != nil {
		return fmt.Errorf("agent: publish %s: %w", cni.AgentInfoPath(o.stateDir), err)
	}
	r := &agentReconciler{log: log, store: cni.Store{Dir: o.stateDir},
		enr: cni.PinnedEnroller{PinDir: a.PinDir, PinRoot: o.pinRoot, CgroupDir: a.CgroupDir, MaxConns: o.maxConns}}
	r.reconcile(true)
	if o.metricsAddr != "" {
		stop, err := serveAgentMetrics(log, o.metricsAddr, r)
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		defer stop()
	}
	log.Info("agent ready", zap.String("pinDir", a.PinDir), zap.String("stateDir", o.stateDir))
	var tick <-chan time.Time
	if o.resync > 0 {
		t := time.NewTicker(o.resync)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			// Leave links, maps and agent.json in place: capture continues while the agent restarts or upgrades.
			log.Info("agent stopping; capture stays attached")
			return nil
		case <-tick:
			r.reconcile(false)
		}
	}
}

// agentCanUseEBPF runs the probe and logs the mode it chose. The agent itself need not read netns cookies (meshcap-cni,
// on the host, reads them and enrolls; a pod it cannot key goes to istio's rules): without that ability alone, as in
// a container whose cgroupfs is read-only on a kernel without SO_NETNS_COOKIE, it attaches and says so.
func agentCanUseEBPF(log *zap.Logger, cgroup string) (bool, error) {
	checks, err := loader.Probe(loader.ProbeOptions{CgroupParent: cgroup})
	if err != nil {
		return false, err
	}
	d := loader.DecideMode(checks, loader.ProbeRequirements{Inbound: true, Agent: true})
	if d.Mode != loader.ProbeModeEBPF && slices.Equal(d.Missing, []string{loader.CheckUserspaceNetnsCookie}) {
		log.Warn("this process reads no netns cookie: meshcap-cni enrolls the pods whose cookie it reads, and applies istio's iptables rules to the others",
			zap.String("reason", d.Reason))
		d = loader.DecideMode(checks, loader.ProbeRequirements{Inbound: true})
	}
	log.Info("capture mode chosen", zap.String("mode", d.Mode), zap.String("reason", d.Reason))
	return d.Mode == loader.ProbeModeEBPF, nil
}

func writeAgentInfo(stateDir string, info cni.AgentInfo) error {
	data, _ := json.MarshalIndent(info, "", "  ")
	path := cni.AgentInfoPath(stateDir)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

type agentReconciler struct {
	log   *zap.Logger
	store cni.Store
	enr   cni.PinnedEnroller
}

// netnsState says whether the recorded netns still exists: alive (same cookie), gone, or unknown (this process
// cannot tell, for example without access to the runtime's netns directory: then the record is kept).
type netnsState int

const (
	netnsUnknown netnsState = iota
	netnsAlive
	netnsGone
)

func recordNetnsState(rec *cni.Enrollment) (netnsState, error) {
	if rec.Netns == "" {
		return netnsUnknown, errors.New("no netns path recorded")
	}
	id, err := cni.ReadNetnsID(rec.Netns)
	same, known := id.Same(rec.NetnsCookie, rec.NetnsInode)
	switch {
	case err == nil && !known:
		return netnsUnknown, fmt.Errorf("netns %s: this process reads no netns cookie to compare with the recorded one", rec.Netns)
	case err == nil && same:
		return netnsAlive, nil
	case err == nil:
		return netnsGone, nil // the path names another netns now
	case errors.Is(err, cni.ErrNetnsGone) && !strings.HasPrefix(rec.Netns, "/proc/"):
		// Only when the directory holding it is visible: a missing mount is no proof.
		if _, serr := os.Stat(filepath.Dir(rec.Netns)); serr == nil {
			return netnsGone, nil
		}
	}
	return netnsUnknown, err
}

// reconcile re-applies every recorded enrollment in place, unenrolls pods whose netns is gone, and registers the
// proxy listener of enrolled pods with inbound capture that have none yet.
func (r *agentReconciler) reconcile(start bool) {
	ids, err := r.store.List()
	if err != nil {
		r.log.Error("reconcile: list enrollments", zap.Error(err))
		return
	}
	for _, id := range ids {
		r.reconcileOne(id, start)
	}
}

// reconcileOne handles one record under the store lock (meshcap-cni's ADD/DEL of the same pod wait meanwhile).
func (r *agentReconciler) reconcileOne(id string, start bool) {
	unlock, err := r.store.Lock()
	if err != nil {
		r.log.Error("reconcile: lock enrollment records", zap.Error(err))
		return
	}
	defer unlock()
	rec, err := r.store.Get(id)
	if err != nil || rec == nil {
		return // removed meanwhile (DEL)
	}
	log := r.log.With(zap.String("container", id), zap.String("pod", rec.Pod.String()), zap.Uint64("netnsCookie", rec.NetnsCookie))
	state, serr := recordNetnsState(rec)
	if state == netnsGone {
		if err := r.enr.Unenroll(rec); err != nil {
			log.Error("unenroll pod whose netns is gone", zap.Error(err))
			return
		}
		if err := r.store.Delete(id); err != nil {
			log.Error("remove record", zap.Error(err))
			return
		}
		log.Info("netns gone: unenrolled", zap.String("netns", rec.Netns))
		return
	}
	pol, err := rec.Policy()
	if err != nil {
		log.Error("recorded capture settings", zap.Error(err))
		return
	}
	if rec.Mode == cni.ModeIPTables {
		if start {
			log.Info("captured by istio's iptables rules in its netns (meshcap-cni's fallback): not enrolled into eBPF")
		}
		return
	}
	if state == netnsAlive {
		warnUncoverable(log, rec)
		// The pod's own addresses (istio's "-o lo" rules) as they are now: an address added after ADD counts too.
		live, err := iptables.EBPFFactsIn(rec.Netns, rec.Capture)
		if err != nil {
			log.Error("pod addresses", zap.Error(err))
			return
		}
		pol.LocalAddrs = live.LocalAddrs
	}
	// In place: for a pod already programmed (agent restart) nothing changes. The inbound step runs only when the
	// pod's netns is alive and its inbound attachment is missing (enrolled while no agent ran) or has no
	// self-registration (attached by an older meshcap).
	target := loader.PodTarget{AgentPinDir: r.enr.PinDir, NetnsCookie: rec.NetnsCookie}
	if state == netnsAlive && pol.InboundEnabled() {
		st, err := loader.InboundStatus(rec.Netns, r.enr.PinRoot)
		if errors.Is(err, loader.ErrInboundNotAttached) || (err == nil && !st.SelfRegister) {
			target.Netns, target.InboundCgroup = rec.Netns, r.enr.InboundCgroup(rec)
		}
	}
	res, err := loader.CapturePod(target, pol, loader.CaptureOptions{FindListener: true, Load: loader.LoadOptions{MaxConns: r.enr.MaxConns}})
	if err != nil {
		log.Error("enroll", zap.Error(err))
		return
	}
	if start {
		log.Info("enrolled", zap.String("netnsState", [...]string{"unknown", "alive", "gone"}[state]))
	}
	if res.Inbound != nil {
		log.Info("attached inbound capture", zap.Bool("listenerRegistered", res.Inbound.Listener))
	}
	if !pol.InboundEnabled() {
		return
	}
	if state != netnsAlive {
		if start && serr != nil {
			log.Warn("cannot open the pod's netns: inbound capture not checked", zap.Error(serr))
		}
		return
	}
	r.registerListener(log, rec, pol)
}

// warnUncoverable logs, at every reconcile, an enrolled pod that eBPF capture no longer fully covers (the facts of
// its netns now ask for something eBPF capture cannot do, which sends such pods to meshcap-cni's iptables
// fallback): its other connections stay captured. IPv6 follows the facts recorded at ADD, as istio's rules do.
func warnUncoverable(log *zap.Logger, rec *cni.Enrollment) {
	facts, err := iptables.EBPFFactsIn(rec.Netns, rec.Capture)
	if un := rec.Capture.EBPFUnsupported(facts); err == nil && len(un) > 0 {
		log.Error("enrolled pod is NOT fully captured: eBPF capture cannot do "+strings.Join(un, "; ")+"; recreate it (meshcap-cni then captures it with istio's iptables rules)",
			zap.String("netns", rec.Netns))
	}
}

// registerListener registers the pod's proxy listeners for inbound capture when none is registered yet, or, in a
// pod with IPv6 capture, no IPv6 one (the proxy starts after CNI ADD has attached inbound capture, and may not
// register itself).
func (r *agentReconciler) registerListener(log *zap.Logger, rec *cni.Enrollment, pol capture.Policy) {
	st, err := loader.InboundStatus(rec.Netns, r.enr.PinRoot)
	if err != nil {
		log.Error("inbound status", zap.Error(err))
		return
	}
	if st.Listener && (!st.IPv6 || st.Listener6) {
		return
	}
	found, err := loader.FindInboundListeners(rec.Netns, st.CapturePort, pol)
	if err != nil {
		if !errors.Is(err, loader.ErrInboundListenerNotFound) {
			log.Warn("find proxy listener", zap.Error(err))
		}
		return
	}
	for _, f := range found {
		err := loader.RegisterInboundListener(r.enr.PinRoot, f)
		f.Close()
		if err != nil {
			log.Error("register proxy listener", zap.Error(err))
			return
		}
	}
	log.Info("registered proxy listener for inbound capture", zap.Uint16("port", st.CapturePort), zap.Int("listeners", len(found)))
}

func agentUninstall(log *zap.Logger, o agentOptions) error {
	var errs []error
	res, err := loader.UninstallAll(o.pinRoot)
	if err != nil {
		errs = append(errs, err)
	}
	if res != nil {
		log.Info("detached and unpinned", zap.Strings("outbound", res.Outbound), zap.Uint64s("inboundNetns", res.Inbound))
	}
	store := cni.Store{Dir: o.stateDir}
	ids, err := store.List()
	if err != nil {
		errs = append(errs, err)
	}
	if len(ids) > 0 {
		if unlock, err := store.Lock(); err == nil {
			defer unlock()
		}
	}
	for _, id := range ids {
		if err := store.Delete(id); err != nil {
			errs = append(errs, err)
		}
	}
	_ = os.Remove(o.stateDir) // only when empty
	if err := os.Remove(cni.AgentInfoPath(o.stateDir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	log.Info("removed enrollment records", zap.Int("records", len(ids)))
	changed, err := cni.Uninstall(o.cniBinDir, o.cniConfDir)
	if err != nil {
		errs = append(errs, err)
	}
	log.Info("removed meshcap-cni", zap.Strings("confs", changed))
	if len(errs) > 0 {
		return fmt.Errorf("agent --uninstall: %w", errors.Join(errs...))
	}
	return nil
}

func newAgentInstallCNICmd(log *zap.Logger) *cobra.Command {
	var opts cni.InstallOptions
	var entryFile string
	cmd := &cobra.Command{
		Use:   "install-cni",
		Short: "Copy meshcap-cni into the CNI bin dir and chain it in the node's primary CNI configuration",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			entry, err := os.ReadFile(entryFile)
			if err != nil {
				return fmt.Errorf("install-cni: %w", err)
			}
			opts.Entry = entry
			conf, err := cni.Install(opts)
			if err != nil {
				return fmt.Errorf("install-cni: %w", err)
			}
			log.Info("meshcap-cni installed", zap.String("conf", conf), zap.String("binDir", opts.BinDir))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.SrcBinary, "src", "/usr/local/bin/meshcap-cni", "meshcap-cni binary to install")
	f.StringVar(&opts.BinDir, "bin-dir", "/host/opt/cni/bin", "CNI bin dir")
	f.StringVar(&opts.ConfDir, "conf-dir", "/host/etc/cni/net.d", "CNI conf dir")
	f.StringVar(&entryFile, "entry-file", "/etc/meshcap/cni-entry.json", "the meshcap-cni conflist entry (JSON)")
	return cmd
}
