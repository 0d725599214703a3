package cni

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/iptables"
)

// Enrollment modes.
const (
	ModeEBPF     = ""         // the node agent's eBPF capture (the default)
	ModeIPTables = "iptables" // istio's own rules in the pod's netns: the fallback for a pod eBPF cannot fully cover
)

// IPTablesEnroller is the per-pod fallback for a pod that eBPF capture cannot fully cover (capture.EBPFUnsupported,
// for example IPv6 addresses): it applies istio-iptables' exact rules inside the pod's network namespace, as
// istio-cni does for every pod, and removes them at DEL while the netns exists (they go with it otherwise).
type IPTablesEnroller struct {
	Log *zap.Logger // nil: no log
}

// Enroll applies the rules of e.Capture with the facts of e.Netns. Idempotent (istio's residue check).
func (f IPTablesEnroller) Enroll(e *Enrollment, _ capture.Policy) error {
	return f.apply(e, e.Capture)
}

// Unenroll removes every ISTIO_* chain and jump from the pod's netns; a netns already gone needs nothing.
func (f IPTablesEnroller) Unenroll(e *Enrollment) error {
	if e.Netns == "" {
		return nil
	}
	id, err := ReadNetnsID(e.Netns)
	if same, known := id.Same(e.NetnsCookie, e.NetnsInode); errors.Is(err, ErrNetnsGone) || (err == nil && known && !same) {
		return nil
	}
	c := e.Capture
	c.CleanupOnly = true
	return f.apply(e, c)
}

func (f IPTablesEnroller) apply(e *Enrollment, c capture.Config) error {
	facts, err := iptables.FactsIn(e.Netns, c)
	if err != nil {
		return fmt.Errorf("iptables fallback: %w", err)
	}
	rs, err := iptables.Build(c, facts)
	if err != nil {
		return fmt.Errorf("iptables fallback: %w", err)
	}
	a := &iptables.Applier{Runner: iptables.NetnsRunner(e.Netns), Log: f.Log}
	if err := a.Apply(context.Background(), c, rs); err != nil {
		return fmt.Errorf("iptables fallback in %s: %w", e.Netns, err)
	}
	return nil
}
