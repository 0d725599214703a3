package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/cni"
)

func init() { register(newAgentCmd) }

type agentOptions struct {
	cgroup, pinRoot, stateDir string
	uninstall                 bool
	cniBinDir, cniConfDir     string
}

// newAgentCmd is DaemonSet mode. Design:
//   - one outbound attachment at the pods' cgroup root, pinned under --pin-root, with NO netns-0 ("any pod")
//     settings: a pod is captured only once its netns cookie has a settings entry (enrollment);
//   - meshcap-cni enrolls at ADD (writes the entry, attaches sk_lookup inbound in the pod netns) and records the
//     pod in --state-dir; DEL removes both;
//   - a restart finds the pinned attachment and keeps it as is (no link or map is replaced, so no established
//     connection loses its state and no new one goes uncaptured), then re-applies every recorded enrollment;
//   - --uninstall detaches and unpins everything and removes meshcap-cni from the CNI configuration.
func newAgentCmd(log *zap.Logger) *cobra.Command {
	o := agentOptions{pinRoot: loader.DefaultPinRoot, stateDir: cni.DefaultStateDir,
		cniBinDir: "/host/opt/cni/bin", cniConfDir: "/host/etc/cni/net.d"}
	cmd := &cobra.Command{
		Use:   "agent --cgroup DIR",
		Short: "Node agent (DaemonSet mode): capture enrolled pods from one attachment at a cgroup root",
		Args:  cobra.NoArgs,
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
	f.StringVar(&o.pinRoot, "pin-root", o.pinRoot, "bpffs directory for pinned links and maps")
	f.StringVar(&o.stateDir, "state-dir", o.stateDir, "meshcap-cni's enrollment records")
	f.BoolVar(&o.uninstall, "uninstall", false, "detach and unpin everything, remove meshcap-cni from the CNI configuration, exit")
	f.StringVar(&o.cniBinDir, "cni-bin-dir", o.cniBinDir, "CNI bin dir (for --uninstall)")
	f.StringVar(&o.cniConfDir, "cni-conf-dir", o.cniConfDir, "CNI conf dir (for --uninstall)")
	cmd.AddCommand(newAgentInstallCNICmd(log))
	return cmd
}

// agentIdlePolicy is the netns-0 policy of the agent's attachment: captures nothing (no -i, no -q). It is written
// by loader.Attach and deleted right after: until the loader has an agent-mode attach, this keeps the window safe.
func agentIdlePolicy() (capture.Policy, error) {
	c := capture.Default()
	c.ProxyUID, c.ProxyGID = "1337", "1337"
	c.OutboundIPRangesInclude, c.InboundPortsInclude = "", ""
	return c.Policy()
}

func runAgent(ctx context.Context, log *zap.Logger, o agentOptions) error {
	if o.cgroup == "" {
		return errors.New("agent: --cgroup is required")
	}
	checks, err := loader.Probe(loader.ProbeOptions{CgroupParent: o.cgroup})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	d := loader.DecideMode(checks, loader.ProbeRequirements{Inbound: true})
	log.Info("capture mode chosen", zap.String("mode", d.Mode), zap.String("reason", d.Reason))
	if d.Mode != loader.ProbeModeEBPF {
		log.Warn("eBPF unavailable on this node: the agent stays idle; use per-pod `meshcap init` (iptables fallback)")
		<-ctx.Done()
		return nil
	}
	pinDir, err := loader.PinDir(o.cgroup, o.pinRoot)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if _, err := os.Stat(pinDir); err == nil {
		log.Info("reusing pinned attachment (restart: links and maps kept)", zap.String("pinDir", pinDir))
	} else {
		idle, err := agentIdlePolicy()
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		a, err := loader.Attach(o.cgroup, idle, o.pinRoot, loader.LoadOptions{})
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		pinDir = a.PinDir
		if err := (cni.PinnedEnroller{PinDir: pinDir, PinRoot: o.pinRoot}).Unenroll(&cni.Enrollment{NetnsCookie: 0}); err != nil {
			return fmt.Errorf("agent: clear netns-0 settings: %w", err)
		}
		log.Info("attached at cgroup root", zap.String("cgroup", o.cgroup), zap.String("pinDir", pinDir))
	}
	info := cni.AgentInfo{CgroupDir: o.cgroup, PinDir: pinDir, PinRoot: o.pinRoot}
	if err := writeAgentInfo(o.stateDir, info); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	agentReconcile(log, o.stateDir, cni.PinnedEnroller{PinDir: pinDir, PinRoot: o.pinRoot})
	<-ctx.Done()
	// Leave links, maps and agent.json in place: capture continues while the agent restarts or upgrades.
	log.Info("agent stopping; capture stays attached")
	return nil
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

// agentReconcile re-applies every recorded enrollment whose netns still exists with the recorded cookie.
func agentReconcile(log *zap.Logger, stateDir string, enr cni.PinnedEnroller) {
	store := cni.Store{Dir: stateDir}
	ids, err := store.List()
	if err != nil {
		log.Error("reconcile", zap.Error(err))
		return
	}
	for _, id := range ids {
		rec, err := store.Get(id)
		if err != nil || rec == nil {
			continue
		}
		nid, err := cni.ReadNetnsID(rec.Netns)
		if err != nil || nid.Cookie != rec.NetnsCookie {
			log.Info("stale enrollment: netns gone, unenrolling", zap.String("container", id))
			_ = enr.Unenroll(rec)
			_ = store.Delete(id)
			continue
		}
		pol, err := rec.Capture.Policy()
		if err == nil {
			err = enr.Enroll(rec, pol)
		}
		if err != nil {
			log.Error("re-enroll", zap.String("container", id), zap.Error(err))
			continue
		}
		log.Info("enrolled", zap.String("pod", rec.Pod.String()), zap.Uint64("netnsCookie", rec.NetnsCookie))
	}
}

func agentUninstall(log *zap.Logger, o agentOptions) error {
	var errs []error
	dirs, err := loader.DetachAll(o.pinRoot)
	if err != nil {
		errs = append(errs, err)
	}
	log.Info("detached", zap.Strings("pinDirs", dirs))
	if _, err := loader.PruneInbound(o.pinRoot); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(cni.AgentInfoPath(o.stateDir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
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
