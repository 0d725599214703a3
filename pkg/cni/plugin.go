package cni

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/hostfs"
	"github.com/meshcap/meshcap/pkg/iptables"
)

// SupportedVersions are the CNI spec versions meshcap-cni speaks.
var SupportedVersions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// Plugin implements the CNI commands. The zero value is not usable: use NewPlugin.
type Plugin struct {
	// NewEnroller returns the dataplane enroller for a configuration (NopEnroller until agent maps exist).
	NewEnroller func(conf *NetConf) (Enroller, error)
	// ReadNetnsID reads a netns' cookie and inode (ReadNetnsID; replaceable in tests).
	ReadNetnsID func(path string) (NetnsID, error)
	// HostFacts reads the pod's facts for c in its netns (iptables.EBPFFactsIn; replaceable in tests): what eBPF
	// capture cannot do there (capture.EBPFUnsupported), and whether it captures IPv6 (capture.Policy.ForPod).
	HostFacts func(netnsPath string, c capture.Config) (capture.HostFacts, error)
	// Fallback captures a pod that eBPF cannot fully cover (IPTablesEnroller: istio's rules in its netns).
	Fallback Enroller
	Stdout   io.Writer // results
	Log      io.Writer // one line per decision (stderr)
	Now      func() time.Time
}

// NewPlugin returns a plugin that writes to stdout/stderr, records enrollments in the state dir and programs
// the node agent's pinned maps when an agent runs (AgentEnroller).
func NewPlugin() *Plugin {
	return &Plugin{
		NewEnroller: AgentEnroller,
		ReadNetnsID: ReadNetnsID,
		HostFacts:   iptables.EBPFFactsIn,
		Fallback:    IPTablesEnroller{},
		Stdout:      os.Stdout,
		Log:         os.Stderr,
		Now:         time.Now,
	}
}

// Funcs returns the skel callbacks.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

func (p *Plugin) logf(format string, a ...any) {
	if p.Log != nil {
		fmt.Fprintf(p.Log, "meshcap-cni: "+format+"\n", a...)
	}
}

func confError(err error) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
}

// input is the parsed part of a call shared by ADD and CHECK.
type input struct {
	conf        *NetConf
	args        map[string]string
	pod         Pod
	annotations map[string]string
	decision    Decision
}

func (p *Plugin) parse(a *skel.CmdArgs) (*input, error) {
	if err := ValidContainerID(a.ContainerID); err != nil {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, err.Error(), "")
	}
	conf, err := ParseConf(a.StdinData)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	args, err := ParseArgs(a.Args)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, err.Error(), "")
	}
	ann, err := conf.Annotations()
	if err != nil {
		return nil, confError(err)
	}
	in := &input{conf: conf, args: args, pod: PodFromArgs(args), annotations: ann}
	if in.decision, err = Decide(conf, in.pod, args, ann); err != nil {
		return nil, confError(err)
	}
	return in, nil
}

// prevIPs returns the addresses of prevResult, in its order.
func prevIPs(prev types.Result) ([]netip.Prefix, error) {
	res, err := types100.NewResultFromResult(prev)
	if err != nil {
		return nil, fmt.Errorf("convert prevResult: %w", err)
	}
	var out []netip.Prefix
	for _, ip := range res.IPs {
		addr, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			return nil, fmt.Errorf("prevResult: invalid address %v", ip.Address)
		}
		ones, _ := ip.Address.Mask.Size()
		out = append(out, netip.PrefixFrom(addr.Unmap(), ones))
	}
	return out, nil
}

// printResult passes prevResult through, converted to the configuration's cniVersion only.
func (p *Plugin) printResult(conf *NetConf) error {
	res, err := conf.PrevResult.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("convert prevResult to %s: %v", conf.CNIVersion, err), "")
	}
	return res.PrintTo(p.Stdout)
}

func requirePrev(conf *NetConf, cmd string) error {
	if conf.PrevResult == nil {
		return confError(fmt.Errorf("%s: no prevResult: %s is a chained plugin and must follow the plugin that creates the interface", cmd, PluginType))
	}
	return nil
}

// Add enrolls the pod if it belongs to the mesh, then passes prevResult through.
func (p *Plugin) Add(a *skel.CmdArgs) error {
	in, err := p.parse(a)
	if err != nil {
		return err
	}
	if err := requirePrev(in.conf, "ADD"); err != nil {
		return err
	}
	if !in.decision.Enroll {
		p.logf("ADD %s pod %s: not enrolled: %s", a.ContainerID, in.pod, in.decision.Reason)
		return p.printResult(in.conf)
	}
	cfg, pol, err := CaptureFor(in.conf, in.args, in.annotations)
	if err != nil {
		return confError(fmt.Errorf("pod %s: %w", in.pod, err))
	}
	ips, err := prevIPs(in.conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	if a.Netns == "" {
		return types.NewError(types.ErrInvalidNetNS, "ADD: CNI_NETNS is empty", "")
	}
	id, err := p.ReadNetnsID(a.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, err.Error(), "")
	}
	facts, err := p.HostFacts(a.Netns, cfg)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("pod %s: %v", in.pod, err), "")
	}
	if pol, err = cfg.PodPolicy(pol, facts, capture.OSGroupLookup); err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("pod %s: %v", in.pod, err), "")
	}
	mode := p.captureMode(a, in.pod, cfg.EBPFUnsupported(facts), id)
	e := &Enrollment{
		ContainerID: a.ContainerID,
		IfName:      a.IfName,
		Netns:       a.Netns,
		NetnsCookie: id.Cookie,
		NetnsInode:  id.Inode,
		Pod:         in.pod,
		IPs:         ips,
		Capture:     cfg,
		Reason:      in.decision.Reason,
		Network:     in.conf.Name,
		Created:     p.Now().UTC(),
		Mode:        mode,
		Facts:       facts,
	}
	store := Store{Dir: in.conf.StateDir}
	unlock, err := store.Lock()
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	defer unlock()
	enr, err := p.enroller(in.conf, mode)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("dataplane: %v", err), "")
	}
	if err := enr.Enroll(e, pol); err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("enroll pod %s (netns cookie %d): %v", in.pod, id.Cookie, err), "")
	}
	if err := store.Put(e); err != nil {
		if uerr := enr.Unenroll(e); uerr != nil {
			err = errors.Join(err, fmt.Errorf("undo enroll: %w", uerr))
		}
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	p.logf("ADD %s pod %s: enrolled (%s) netns cookie %d ips %v: %s", a.ContainerID, in.pod, modeName(mode), id.Cookie, ips, in.decision.Reason)
	return p.printResult(in.conf)
}

// captureMode decides how an enrolled pod is captured: ModeEBPF, or ModeIPTables when eBPF capture cannot fully
// cover it (un: capture.EBPFUnsupported with the facts of its netns, for example --redirect-dns): enrolling it
// into eBPF would leave those connections uncaptured. The fallback is logged with the reason.
func (p *Plugin) captureMode(a *skel.CmdArgs, pod Pod, un []string, id NetnsID) string {
	if !hostfs.IsNetnsCookie(id.Cookie) {
		un = append(un, "agent mode here (no netns cookie readable from userspace: no SO_NETNS_COOKIE, which needs Linux 5.14, and the cgroup/sock_create reader failed or is disabled; `meshcap probe` says why)")
	}
	if len(un) == 0 {
		return ModeEBPF
	}
	p.logf("ADD %s pod %s: NOT enrolled into eBPF capture, which cannot do %s: istio's iptables rules are applied in its netns instead",
		a.ContainerID, pod, strings.Join(un, "; "))
	return ModeIPTables
}

// enroller returns the dataplane of a capture mode.
func (p *Plugin) enroller(conf *NetConf, mode string) (Enroller, error) {
	if mode == ModeIPTables {
		if p.Fallback == nil {
			return nil, errors.New("no iptables fallback configured")
		}
		return p.Fallback, nil
	}
	return p.NewEnroller(conf)
}

func modeName(mode string) string {
	if mode == ModeIPTables {
		return "iptables"
	}
	return "ebpf"
}

// Del unenrolls the pod. It needs neither the netns (it may be empty or gone) nor a record (then it does nothing).
func (p *Plugin) Del(a *skel.CmdArgs) error {
	if err := ValidContainerID(a.ContainerID); err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, err.Error(), "")
	}
	conf, err := ParseConf(a.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	store := Store{Dir: conf.StateDir}
	rec, err := store.Get(a.ContainerID)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	if rec == nil {
		return nil
	}
	unlock, err := store.Lock()
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	defer unlock()
	if rec, err = store.Get(a.ContainerID); err != nil { // again, under the lock
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	if rec == nil {
		return nil
	}
	if err := p.unenroll(conf, store, rec); err != nil {
		return err
	}
	p.logf("DEL %s pod %s: unenrolled netns cookie %d", a.ContainerID, rec.Pod, rec.NetnsCookie)
	return nil
}

func (p *Plugin) unenroll(conf *NetConf, store Store, rec *Enrollment) error {
	enr, err := p.enroller(conf, rec.Mode)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("dataplane: %v", err), "")
	}
	if err := enr.Unenroll(rec); err != nil {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("unenroll pod %s (netns cookie %d): %v", rec.Pod, rec.NetnsCookie, err), "")
	}
	if err := store.Delete(rec.ContainerID); err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	return nil
}

// Check verifies that the pod is enrolled exactly when it should be, in the same netns, with the same IPs.
func (p *Plugin) Check(a *skel.CmdArgs) error {
	in, err := p.parse(a)
	if err != nil {
		return err
	}
	if err := requirePrev(in.conf, "CHECK"); err != nil {
		return err
	}
	rec, err := Store{Dir: in.conf.StateDir}.Get(a.ContainerID)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	switch {
	case !in.decision.Enroll && rec == nil:
		return nil
	case !in.decision.Enroll:
		return types.NewError(types.ErrInternal, fmt.Sprintf("CHECK: pod %s is enrolled but should not be (%s)", in.pod, in.decision.Reason), "")
	case rec == nil:
		return types.NewError(types.ErrInternal, fmt.Sprintf("CHECK: pod %s should be enrolled (%s) but has no record", in.pod, in.decision.Reason), "")
	}
	id, err := p.ReadNetnsID(a.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, err.Error(), "")
	}
	if same, known := id.Same(rec.NetnsCookie, rec.NetnsInode); !same {
		what := "is"
		if !known {
			what = "cannot be compared (no netns cookie readable here):"
		}
		return types.NewError(types.ErrInternal, fmt.Sprintf("CHECK: pod %s: netns cookie %s %d, enrolled %d", in.pod, what, id.Cookie, rec.NetnsCookie), "")
	}
	ips, err := prevIPs(in.conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	if !slices.Equal(ips, rec.IPs) {
		return types.NewError(types.ErrInternal, fmt.Sprintf("CHECK: pod %s: IPs are %v, enrolled %v", in.pod, ips, rec.IPs), "")
	}
	if _, _, err := CaptureFor(in.conf, in.args, in.annotations); err != nil {
		return confError(err)
	}
	return nil
}

// GC (CNI 1.1) unenrolls every recorded pod whose container is not among the valid attachments.
func (p *Plugin) GC(a *skel.CmdArgs) error {
	conf, err := ParseConf(a.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	store := Store{Dir: conf.StateDir}
	ids, err := store.List()
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	if len(ids) == 0 {
		return nil
	}
	unlock, err := store.Lock()
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	defer unlock()
	valid := map[string]bool{}
	for _, v := range conf.ValidAttachments {
		valid[v.ContainerID] = true
	}
	var errs []error
	for _, id := range ids {
		if valid[id] {
			continue
		}
		rec, err := store.Get(id)
		if err != nil || rec == nil || (rec.Network != "" && rec.Network != conf.Name) {
			continue
		}
		if err := p.unenroll(conf, store, rec); err != nil {
			errs = append(errs, err)
			continue
		}
		p.logf("GC %s pod %s: unenrolled netns cookie %d", id, rec.Pod, rec.NetnsCookie)
	}
	if len(errs) > 0 {
		return types.NewError(types.ErrTryAgainLater, errors.Join(errs...).Error(), "")
	}
	return nil
}

// Status (CNI 1.1) reports ready when the configuration parses and the state dir is usable.
func (p *Plugin) Status(a *skel.CmdArgs) error {
	conf, err := ParseConf(a.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	if err := os.MkdirAll(conf.StateDir, 0o700); err != nil {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("state dir: %v", err), "")
	}
	return nil
}
