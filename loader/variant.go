package loader

// Program variants: what differs by kernel in the outbound programs is chosen here, at load time, from the same
// checks `meshcap probe` runs, and written into the objects' `volatile const` settings before they are loaded
// (the verifier then drops the branches not taken). No -D builds: one object per hook serves every kernel.
//
// Invariant: every variant keys pods by the netns cookie the kernel gives (never 0, never a guess), so no key
// of one pod can collide with another pod's whatever the variant.

import (
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// NetnsSource says where the sockops and getsockopt programs read a socket's netns cookie.
type NetnsSource int

const (
	// NetnsFromHelper: bpf_get_netns_cookie, which sock_ops and cgroup_sockopt programs have from Linux 5.15.
	NetnsFromHelper NetnsSource = iota
	// NetnsFromStorage: the cookie cgroup/sock_create recorded for the socket (mc_sk_netns, cloned into the
	// sockets a listener accepts); for Linux 5.10 to 5.14. A proxy socket accepted from a listener created before
	// the attachment has none: sockops reads its cookie through BTF and records it there (chooseSockops). A
	// socket whose cookie stays unknown (0) is never matched (fail closed: the proxy gets no destination for it).
	NetnsFromStorage
)

// Variant is the set of load-time choices.
type Variant struct {
	Netns NetnsSource
}

// String names the variant as `meshcap probe` shows it.
func (v Variant) String() string {
	if v.Netns == NetnsFromStorage {
		return "netns-cookie-from-sock-create"
	}
	return "netns-cookie-helper"
}

// variantChecks are the probe checks ChooseVariant reads.
var variantChecks = []string{"helper:sock_ops:get_netns_cookie", "helper:cgroup_sockopt:get_netns_cookie"}

// ChooseVariant is the pure choice from probe results: the helper where both program types have it, else the
// cookie recorded by sock_create (whose own checks are ScopeCore, so DecideMode already requires them).
func ChooseVariant(checks []FeatureCheck) Variant {
	for _, name := range variantChecks {
		i := slices.IndexFunc(checks, func(c FeatureCheck) bool { return c.Name == name })
		if i < 0 || !checks[i].OK {
			return Variant{Netns: NetnsFromStorage}
		}
	}
	return Variant{Netns: NetnsFromHelper}
}

// probeVariant runs the checks ChooseVariant needs on this kernel (cached by cilium/ebpf; MESHCAP_PROBE_DISABLE
// applies, so a test can load the 5.10 variant on a newer kernel).
func probeVariant() (Variant, error) {
	checks, err := Probe(ProbeOptions{Only: variantChecks})
	if err != nil {
		return Variant{}, fmt.Errorf("choose program variant: %w", err)
	}
	return ChooseVariant(checks), nil
}

// applyVariant writes v into the `volatile const` settings of one hook's object (objects without them: nothing),
// and picks sockops's entry point.
func applyVariant(spec *ebpf.CollectionSpec, v Variant) error {
	chooseSockops(spec, v)
	vs, ok := spec.Variables["mc_netns_from_storage"]
	if !ok {
		return nil
	}
	var fromStorage uint32
	if v.Netns == NetnsFromStorage {
		fromStorage = 1
	}
	if err := vs.Set(fromStorage); err != nil {
		return fmt.Errorf("set mc_netns_from_storage: %w", err)
	}
	return nil
}

// chooseSockops leaves one of sockops.c's two entry points in its spec, under the hook's program name. The storage
// variant gets mc_sockops_btf, which also serves proxy sockets accepted from a listener created before the
// attachment (their netns cookie read through BTF, as sock_create never saw them). It carries CO-RE relocations,
// so it is loaded only there and only with the kernel's BTF at hand; everywhere else mc_sockops, which needs no
// kernel BTF. Storage variant without kernel BTF: such sockets stay unmatched (fail closed), as before.
func chooseSockops(spec *ebpf.CollectionSpec, v Variant) {
	withBTF, ok := spec.Programs[sockopsProgMcSockopsBtf]
	if !ok {
		return
	}
	delete(spec.Programs, sockopsProgMcSockopsBtf)
	if v.Netns != NetnsFromStorage {
		return
	}
	if _, err := btf.LoadKernelSpec(); err != nil {
		return
	}
	spec.Programs[sockopsProgMcSockops] = withBTF
}
