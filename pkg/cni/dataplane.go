package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/capture"
)

// AgentInfo is what a running node agent publishes (StateDir/../agent.json) so that meshcap-cni finds its pins.
type AgentInfo struct {
	CgroupDir string `json:"cgroupDir"`
	PinDir    string `json:"pinDir"`
	PinRoot   string `json:"pinRoot"`
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

// settingsMapNames are the pinned per-netns settings maps of an outbound attachment (loader/objects.go).
// TODO(bpf-out): replace with a loader API (OpenPolicyMaps / SetPodPolicy) so the names live in one place.
var settingsMapNames = []string{"mc_config", "mc_cidr_excl", "mc_cidr_incl", "mc_ports"}

// PinnedEnroller writes per-pod settings (keyed by netns cookie) into the agent's pinned maps, and attaches
// inbound capture (sk_lookup) in the pod's netns.
type PinnedEnroller struct {
	PinDir  string // the agent's outbound attachment (pinRoot/cgroup-<id>)
	PinRoot string // for per-netns inbound attachments
}

func (p PinnedEnroller) open() (*loader.Objects, error) {
	objs := &loader.Objects{Maps: map[string]*ebpf.Map{}}
	for _, name := range settingsMapNames {
		m, err := ebpf.LoadPinnedMap(filepath.Join(p.PinDir, name), nil)
		if err != nil {
			objs.Close()
			return nil, fmt.Errorf("open agent map %s: %w", name, err)
		}
		objs.Maps[name] = m
	}
	return objs, nil
}

// Enroll writes the pod's policy under its netns cookie (outbound), then attaches inbound capture in its netns.
func (p PinnedEnroller) Enroll(e *Enrollment, pol capture.Policy) error {
	objs, err := p.open()
	if err != nil {
		return err
	}
	defer objs.Close()
	if err := objs.SetPolicy(e.NetnsCookie, pol); err != nil {
		return err
	}
	if pol.InboundEnabled() && e.Netns != "" {
		if _, err := loader.AttachInbound(e.Netns, pol, loader.InboundOptions{PinRoot: p.PinRoot, FindListener: true}); err != nil {
			_ = objs.DeletePolicy(e.NetnsCookie)
			return err
		}
	}
	return nil
}

// Unenroll removes the pod's policy and its inbound attachment; neither needs the netns.
func (p PinnedEnroller) Unenroll(e *Enrollment) error {
	objs, err := p.open()
	if err != nil {
		return err
	}
	defer objs.Close()
	if err := objs.DeletePolicy(e.NetnsCookie); err != nil {
		return err
	}
	if err := loader.DetachInboundCookie(p.PinRoot, e.NetnsCookie); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// AgentEnroller returns the PinnedEnroller of the running agent, or NopEnroller (records only; the agent
// programs recorded pods when it starts) when no agent has published its pins.
func AgentEnroller(conf *NetConf) (Enroller, error) {
	info, err := ReadAgentInfo(conf.StateDir)
	if err != nil {
		return nil, err
	}
	if info == nil {
		return NopEnroller{}, nil
	}
	return PinnedEnroller{PinDir: info.PinDir, PinRoot: info.PinRoot}, nil
}
