package loader

// "Capture this pod": the one owner of the sequence every front end (ebpf attach/detach, init, meshcap-cni, the
// agent) needs. Under the pin root's lock, in this order:
//  1. outbound: per-pod mode attaches (or replaces the settings of) the pod cgroup's own attachment; agent mode
//     writes the pod's settings under its netns cookie into the node agent's attachment;
//  2. inbound: with -b, attaches (or updates) sk_lookup in the pod's netns; without -b, removes an inbound
//     attachment left from an earlier capture of that netns;
//  3. on an inbound failure, a pod that was not captured before is left uncaptured (outbound undone); a pod that
//     was keeps its capture.
// Calling it again with the same arguments changes nothing; concurrent calls, from any number of processes,
// serialise on the lock, so the result equals some serial order of them.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshcap/meshcap/pkg/capture"
	"github.com/meshcap/meshcap/pkg/hostfs"
)

// PodTarget names one pod.
type PodTarget struct {
	// Cgroup is the pod's cgroup v2 directory: per-pod mode, an outbound attachment of its own. "" with
	// AgentPinDir unset means "no outbound step" (UncapturePod of a netns only).
	Cgroup string
	// AgentPinDir selects node-agent mode: the agent's attachment (a cgroup-<id> dir made by AttachAgent); the pod
	// is enrolled there by netns cookie. The pin root is its parent.
	AgentPinDir string
	// Netns is the pod's network namespace file (/var/run/netns/NAME, /proc/PID/ns/net): where inbound capture
	// goes, and in agent mode where the cookie comes from. "" skips the inbound attach (agent mode: NetnsCookie).
	Netns string
	// NetnsCookie names the pod's netns in agent mode when Netns is "" (for example after the netns is gone).
	NetnsCookie uint64
	// InboundCgroup is, in agent mode, the cgroup the pod's inbound cgroup programs (self-registration of its
	// sidecar's listener, InboundOptions.Cgroup) go on: the pod's own cgroup, or the agent's shared one. Per-pod
	// mode uses Cgroup.
	InboundCgroup string
}

func (t PodTarget) agent() bool { return t.AgentPinDir != "" }

// inboundCgroup is where the inbound cgroup programs of the pod go.
func (t PodTarget) inboundCgroup() string {
	if t.agent() {
		return t.InboundCgroup
	}
	return t.Cgroup
}

// CaptureOptions tune CapturePod.
type CaptureOptions struct {
	PinRoot      string      // per-pod mode ("" = DefaultPinRoot); agent mode uses AgentPinDir's parent
	Load         LoadOptions // per-pod mode: capacity (MaxConns) and the fast path; agent mode: MaxConns only
	FindListener bool        // inbound: register a proxy already listening on the capture port
}

// PodCapture is what CapturePod did.
type PodCapture struct {
	Outbound       *Attachment  // per-pod mode
	NetnsCookie    uint64       // 0 when no netns was named
	Replaced       bool         // the pod was already captured: its settings were replaced in place
	Inbound        *InboundInfo // nil when the policy captures no inbound port (or no netns was named)
	InboundRemoved bool         // -b is empty and an earlier inbound attachment of the netns was removed
}

// CapturePod captures one pod with policy p (see the file comment for the sequence). On error nothing new stays
// attached, and a pod captured before keeps its capture.
func CapturePod(t PodTarget, p capture.Policy, o CaptureOptions) (*PodCapture, error) {
	if err := validatePolicy(p); err != nil {
		return nil, err
	}
	res := &PodCapture{NetnsCookie: t.NetnsCookie}
	if t.Netns != "" {
		cookie, err := InboundCookie(t.Netns) // before anything changes: a bad netns leaves nothing half-applied
		if err != nil {
			return nil, fmt.Errorf("netns %q: %w", t.Netns, err)
		}
		res.NetnsCookie = cookie
	}
	root, err := t.root(o.PinRoot)
	if err != nil {
		return nil, err
	}
	unlock, _, err := lockRoot(root, !t.agent())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := Failpoint("capture-before"); err != nil {
		return nil, err
	}
	undo, err := captureOutbound(t, p, root, o, res)
	if err != nil {
		removeIfEmpty(root)
		return nil, err
	}
	inboundFresh := res.NetnsCookie != 0 && !exists(InboundPinDir(root, res.NetnsCookie))
	err = Failpoint("capture-after-outbound")
	if err == nil {
		err = captureInbound(t, p, root, o, res)
	}
	if err == nil {
		err = Failpoint("capture-after-inbound")
	}
	if err != nil {
		if inboundFresh && res.Inbound != nil {
			if uerr := DetachInboundCookie(root, res.NetnsCookie); uerr != nil {
				err = errors.Join(err, fmt.Errorf("undo inbound capture: %w", uerr))
			}
		}
		if undo != nil {
			if uerr := undo(); uerr != nil {
				err = errors.Join(err, fmt.Errorf("undo outbound capture: %w", uerr))
			}
		}
		removeIfEmpty(root)
		return nil, err
	}
	return res, nil
}

func (t PodTarget) root(pinRoot string) (string, error) {
	switch {
	case t.agent() && t.Cgroup != "":
		return "", errors.New("capture pod: a cgroup and an agent attachment both given")
	case t.agent():
		if t.NetnsCookie == 0 && t.Netns == "" {
			return "", errors.New("capture pod: agent mode needs the pod's netns or netns cookie")
		}
		return filepath.Dir(filepath.Clean(t.AgentPinDir)), nil
	}
	return rootOrDefault(pinRoot), nil
}

// captureOutbound does step 1 and returns the undo of a first capture (nil when the pod was captured before).
func captureOutbound(t PodTarget, p capture.Policy, root string, o CaptureOptions, res *PodCapture) (func() error, error) {
	if t.agent() {
		if !hostfs.IsNetnsCookie(res.NetnsCookie) { // NetnsID's stand-in: no cookie readable here, no agent mode
			return nil, fmt.Errorf("enroll netns id %#x in %s: %w: agent mode is unavailable, use per-pod mode", res.NetnsCookie, t.AgentPinDir, ErrNoNetnsCookie)
		}
		was, err := enrollLocked(t.AgentPinDir, res.NetnsCookie, p, o.Load.MaxConns)
		if err != nil {
			return nil, fmt.Errorf("enroll netns cookie %d in %s: %w", res.NetnsCookie, t.AgentPinDir, err)
		}
		res.Replaced = was
		if was {
			return nil, nil
		}
		return func() error { return unenrollLocked(t.AgentPinDir, res.NetnsCookie) }, nil
	}
	if t.Cgroup == "" {
		return nil, errors.New("capture pod: no cgroup")
	}
	a, err := attachLocked(t.Cgroup, &p, root, o.Load)
	if err != nil {
		return nil, err
	}
	res.Outbound, res.Replaced = a, a.Replaced
	if a.Replaced {
		return nil, nil
	}
	return func() error { _, err := detachLocked(t.Cgroup, root); return err }, nil
}

// captureInbound does step 2.
func captureInbound(t PodTarget, p capture.Policy, root string, o CaptureOptions, res *PodCapture) error {
	if p.InboundEnabled() {
		if t.Netns == "" {
			return nil
		}
		info, err := AttachInbound(t.Netns, p, InboundOptions{PinRoot: root, FindListener: o.FindListener,
			Cgroup: t.inboundCgroup()})
		res.Inbound = info
		return err
	}
	if res.NetnsCookie == 0 {
		return nil
	}
	if _, err := os.Stat(InboundPinDir(root, res.NetnsCookie)); err != nil {
		return nil
	}
	if err := DetachInboundCookie(root, res.NetnsCookie); err != nil {
		return fmt.Errorf("remove inbound capture (-b is empty): %w", err)
	}
	res.InboundRemoved = true
	return nil
}

// PodUncapture is what UncapturePod removed.
type PodUncapture struct {
	Outbound bool // outbound capture was attached (per-pod) or enrolled (agent) and is removed
	Inbound  bool // inbound capture was attached and is removed
}

// UncapturePod removes the capture of one pod: outbound (the cgroup's own attachment, or the agent enrollment) and
// inbound (of Netns, or in agent mode of NetnsCookie when Netns is ""). Only what the target names, and only when it
// can be identified: a Cgroup path that does not exist names nothing (no other attachment is ever taken for it).
// Idempotent.
func UncapturePod(t PodTarget, pinRoot string) (PodUncapture, error) {
	var res PodUncapture
	cookie := t.NetnsCookie
	if t.Netns != "" {
		c, err := InboundCookie(t.Netns)
		if err != nil {
			return res, fmt.Errorf("netns %q: %w", t.Netns, err)
		}
		cookie = c
	}
	root, err := t.root(pinRoot)
	if err != nil {
		return res, err
	}
	unlock, ok, err := lockRoot(root, false)
	if !ok || err != nil {
		return res, err
	}
	defer unlock()
	var errs []error
	switch {
	case t.agent():
		res.Outbound, err = unenrollIfEnrolled(t.AgentPinDir, cookie)
		errs = append(errs, err)
	case t.Cgroup != "":
		res.Outbound, err = detachLocked(t.Cgroup, root)
		errs = append(errs, err)
	}
	if cookie != 0 {
		if _, err := os.Stat(InboundPinDir(root, cookie)); err == nil {
			res.Inbound = true
			errs = append(errs, DetachInboundCookie(root, cookie))
		}
	}
	removeIfEmpty(root)
	return res, errors.Join(errs...)
}

func unenrollIfEnrolled(pinDir string, cookie uint64) (bool, error) {
	was, err := NetnsEnrolled(pinDir, cookie)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // no agent attachment: nothing enrolled
	}
	if err != nil || !was {
		return false, err
	}
	return true, unenrollLocked(pinDir, cookie)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// FailpointEnv names the test-only failure injection: MESHCAP_FAILPOINT=NAME makes the step NAME fail (see README,
// "Testing"). Steps: capture-before, capture-after-outbound, capture-after-inbound (CapturePod), init-after-ebpf
// (meshcap init). Unset in production, it changes nothing.
const FailpointEnv = "MESHCAP_FAILPOINT"

// Failpoint returns an error when MESHCAP_FAILPOINT names this step.
func Failpoint(name string) error {
	if os.Getenv(FailpointEnv) == name {
		return fmt.Errorf("injected failure at %s (%s)", name, FailpointEnv)
	}
	return nil
}
