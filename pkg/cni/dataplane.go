package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/iptables"
)

// AgentInfo is what a running node agent publishes (StateDir/../agent.json) so that meshcap-cni finds its pins.
type AgentInfo struct {
	CgroupDir string `json:"cgroupDir"`
	PinDir    string `json:"pinDir"`
	PinRoot   string `json:"pinRoot"`
	// MaxConnections is the per-pod capacity the agent runs with (its --max-connections); 0 = the default.
	MaxConnections uint32 `json:"maxConnections,omitempty"`
}

// AgentInfoPath is where the agent publishes AgentInfo for meshcap-cni configured with stateDir.
func AgentInfoPath(stateDir string) string {
	return filepath.Join(filepath.Dir(stateDir), "agent.json")
}

// ReadAgentInfo returns the published agent info, or nil when no agent runs.
func ReadAgentInfo(stateDir string) (*AgentInfo, error) {
	data, err := os.ReadFile(AgentInfoPath(stateDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var a AgentInfo
	if err := json.Unmarshal(data, &a); err != nil {
		return nil, fmt.Errorf("parse %s: %w", AgentInfoPath(stateDir), err)
	}
	return &a, nil
}

// PinnedEnroller programs the running node agent's dataplane for one pod: the pod's outbound settings keyed by its
// netns cookie in the agent's pinned attachment (loader.EnrollNetns), and inbound capture (sk_lookup) in the pod's
// netns when its policy captures inbound ports (-b).
type PinnedEnroller struct {
	PinDir  string // the agent's outbound attachment (pinRoot/cgroup-<id>)
	PinRoot string // for per-netns inbound attachments (pinRoot/netns-<cookie>/inbound)
	// CgroupDir is the agent's shared cgroup (the pods' cgroup root). Each pod's inbound cgroup programs, which
	// register its sidecar's listener by themselves (loader.InboundOptions.Cgroup), go on the pod's own cgroup below
	// it when the pod UID finds one, else on CgroupDir (see InboundCgroup).
	CgroupDir string
	// MaxConns is each pod's capacity of captured connections (0 = the default).
	MaxConns uint32
}

// InboundCgroup is where the inbound cgroup programs of pod e go: the pod's own cgroup under CgroupDir (found by the
// K8S_POD_UID the runtime passed), so that a node's pods do not share the kernel's 64 programs per hook of one
// cgroup; the shared CgroupDir when the UID is unknown or names no cgroup there.
func (p PinnedEnroller) InboundCgroup(e *Enrollment) string {
	if p.CgroupDir == "" || e.Pod.UID == "" {
		return p.CgroupDir
	}
	if dir, err := loader.FindPodCgroup(p.CgroupDir, e.Pod.UID); err == nil {
		return dir
	}
	return p.CgroupDir
}

// Enroll captures the pod through the agent's attachment (loader.CapturePod: its outbound settings under its netns
// cookie, then inbound capture in its netns, or the removal of inbound capture the policy no longer asks for).
// Idempotent; a pod that was not enrolled before is left unenrolled on error.
func (p PinnedEnroller) Enroll(e *Enrollment, pol capture.Policy) error {
	pol, err := iptables.EBPFPolicyIn(e.Netns, e.Capture, pol) // the pod's own addresses
	if err != nil {
		return err
	}
	_, err = loader.CapturePod(p.target(e, e.Netns), pol, loader.CaptureOptions{FindListener: true,
		Load: loader.LoadOptions{MaxConns: p.MaxConns}})
	return err
}

// Unenroll removes the pod's outbound settings and its inbound attachment; neither needs the netns (it may be gone).
func (p PinnedEnroller) Unenroll(e *Enrollment) error {
	_, err := loader.UncapturePod(p.target(e, ""), "")
	return err
}

func (p PinnedEnroller) target(e *Enrollment, netns string) loader.PodTarget {
	t := loader.PodTarget{AgentPinDir: p.PinDir, Netns: netns, NetnsCookie: e.NetnsCookie}
	if netns != "" {
		t.InboundCgroup = p.InboundCgroup(e)
	}
	return t
}

// AgentEnroller returns the PinnedEnroller of the node agent, or NopEnroller (records only; the agent programs
// recorded pods when it starts) when no agent has published its pins. The pins outlive the agent process, so
// pods are enrolled while the agent restarts too.
func AgentEnroller(conf *NetConf) (Enroller, error) {
	info, err := ReadAgentInfo(conf.StateDir)
	if err != nil {
		return nil, err
	}
	if info == nil {
		return NopEnroller{}, nil
	}
	return PinnedEnroller{PinDir: info.PinDir, PinRoot: info.PinRoot, CgroupDir: info.CgroupDir, MaxConns: info.MaxConnections}, nil
}
