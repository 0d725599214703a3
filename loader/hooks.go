package loader

// The hook table: every BPF program meshcap loads is one entry of hookTable, and nothing else in the loader lists
// hooks. From it come the outbound attach/update/detach order, the completeness check and status of a pinned
// attachment, the link pin names (pins.go), the inbound cgroup and netns programs, and every kernel check of the
// probe (probe_hooks.go: program types, attach types, the map types of the objects and the helpers the programs'
// instructions call).
//
// Adding a hook: write bpf/<hook>.c (one file per hook), add its bpf2go line to gen.go or inbound_gen.go and run
// `make generate`, then add one entry here. The unit tests check the entry against the object (the program exists,
// its ELF section gives the program and attach type written here, pin names are unique).

import (
	"slices"

	"github.com/cilium/ebpf"
)

// hookSide is which attachment a hook belongs to; it also gives the probe scope of the hook's checks.
type hookSide uint8

const (
	// sideOutbound: the cgroup-<id>/ attachment (Attach, AttachShared: per-pod and agent mode). Needed for any
	// eBPF capture (ScopeCore).
	sideOutbound hookSide = iota
	// sideInbound: the netns-<cookie>/inbound/ attachment (AttachInbound). Needed for inbound capture
	// (ScopeInbound).
	sideInbound
)

// hookTarget is what a hook's program is attached to.
type hookTarget uint8

const (
	targetCgroup   hookTarget = iota // a bpf_link on a cgroup v2 directory (link.AttachCgroup)
	targetNetns                      // a bpf_link on a network namespace (link.AttachNetNs: sk_lookup)
	targetSockhash                   // the outbound mc_sockhash map (sk_msg): the map holds the program, no link
)

// hook is one program: where it comes from, what it is attached to, and by which attachment.
type hook struct {
	name     string                               // link pin: link_<name> (outbound), cg_<name> (inbound cgroup)
	prog     string                               // the program (C function) in the object
	object   string                               // its C file under bpf/: the hooks of one file share one load
	load     func() (*ebpf.CollectionSpec, error) // bpf2go's loader of that file
	progType ebpf.ProgramType                     // as the program's ELF section says (checked by the tests)
	attach   ebpf.AttachType                      // as the program's ELF section says (checked by the tests)
	side     hookSide
	target   hookTarget
	// added: a hook newer than the first pinned layout. An attachment made before it existed lacks its link; a
	// re-attach adds it (updateLinks) instead of detaching everything, so capture never has a gap.
	added bool
}

// hookTable is every hook. Outbound cgroup hooks are attached in this order on a fresh attach, and detached in
// reverse: the connect programs come last so that no connection is redirected before sockops/getsockopt are there
// to answer for it. Inbound cgroup hooks go in before the sk_lookup link is made or updated.
var hookTable = []hook{
	{"sockops", "mc_sockops", "sockops.c", loadSockops, ebpf.SockOps, ebpf.AttachCGroupSockOps, sideOutbound, targetCgroup, false},
	{"getsockopt", "mc_getsockopt", "getsockopt.c", loadGetsockopt, ebpf.CGroupSockopt, ebpf.AttachCGroupGetsockopt, sideOutbound, targetCgroup, false},
	{"getpeername4", "mc_getpeername4", "getpeername4.c", loadGetpeername4, ebpf.CGroupSockAddr, ebpf.AttachCgroupInet4GetPeername, sideOutbound, targetCgroup, false},
	{"getpeername6", "mc_getpeername6", "getpeername6.c", loadGetpeername6, ebpf.CGroupSockAddr, ebpf.AttachCgroupInet6GetPeername, sideOutbound, targetCgroup, true},
	{"sockrelease", "mc_sock_release", "sockrelease.c", loadSockrelease, ebpf.CGroupSock, ebpf.AttachCgroupInetSockRelease, sideOutbound, targetCgroup, false},
	{"sockcreate", "mc_sock_create", "sockcreate.c", loadSockcreate, ebpf.CGroupSock, ebpf.AttachCGroupInetSockCreate, sideOutbound, targetCgroup, true},
	// DNS capture (dns.go, bpf/include/dns.h): the answers' side before the sends that need it.
	{"recvmsg4", "mc_recvmsg4", "recvmsg4.c", loadRecvmsg4, ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP4Recvmsg, sideOutbound, targetCgroup, true},
	{"recvmsg6", "mc_recvmsg6", "recvmsg6.c", loadRecvmsg6, ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP6Recvmsg, sideOutbound, targetCgroup, true},
	{"sendmsg4", "mc_sendmsg4", "sendmsg4.c", loadSendmsg4, ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP4Sendmsg, sideOutbound, targetCgroup, true},
	{"sendmsg6", "mc_sendmsg6", "sendmsg6.c", loadSendmsg6, ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP6Sendmsg, sideOutbound, targetCgroup, true},
	{"connect6", "mc_connect6", "connect6.c", loadConnect6, ebpf.CGroupSockAddr, ebpf.AttachCGroupInet6Connect, sideOutbound, targetCgroup, true},
	{"connect4", "mc_connect4", "connect4.c", loadConnect4, ebpf.CGroupSockAddr, ebpf.AttachCGroupInet4Connect, sideOutbound, targetCgroup, false},
	{"fastpath", "mc_fastpath", "fastpath.c", loadFastpath, ebpf.SkMsg, ebpf.AttachSkMsgVerdict, sideOutbound, targetSockhash, false},

	{"sk_lookup", "inb_sk_lookup", "sk_lookup.c", loadInbound, ebpf.SkLookup, ebpf.AttachSkLookup, sideInbound, targetNetns, false},
	{"post_bind4", "inb_post_bind4", "inbound_bind.c", loadInboundBind, ebpf.CGroupSock, ebpf.AttachCGroupInet4PostBind, sideInbound, targetCgroup, false},
	{"post_bind6", "inb_post_bind6", "inbound_bind.c", loadInboundBind, ebpf.CGroupSock, ebpf.AttachCGroupInet6PostBind, sideInbound, targetCgroup, false},
	{"sockops", "inb_sockops", "inbound_sockops.c", loadInboundSockops, ebpf.SockOps, ebpf.AttachCGroupSockOps, sideInbound, targetCgroup, false},
	{"getsockopt", "inb_getsockopt", "inbound_getsockopt.c", loadInboundGetsockopt, ebpf.CGroupSockopt, ebpf.AttachCGroupGetsockopt, sideInbound, targetCgroup, false},
}

// Views of hookTable, in table order.
var (
	hooks          = hooksOf(sideOutbound, targetCgroup) // the outbound cgroup hooks (links in cgroup-<id>/)
	outboundHooks  = hooksOf(sideOutbound)               // every program Load loads
	fastPathHook   = hooksOf(sideOutbound, targetSockhash)[0]
	inbLookupHook  = hooksOf(sideInbound, targetNetns)[0]
	inbCgroupHooks = hooksOf(sideInbound, targetCgroup)
)

// hooksOf returns the hooks of one side, only those with one of targets when any are given.
func hooksOf(side hookSide, targets ...hookTarget) []hook {
	var out []hook
	for _, h := range hookTable {
		if h.side != side {
			continue
		}
		if len(targets) > 0 && !slices.Contains(targets, h.target) {
			continue
		}
		out = append(out, h)
	}
	return out
}

// byObject groups hs by object (C file), in order of first appearance: each group is one load.
func byObject(hs []hook) [][]hook {
	var groups [][]hook
	at := map[string]int{}
	for _, h := range hs {
		i, ok := at[h.object]
		if !ok {
			i = len(groups)
			at[h.object] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], h)
	}
	return groups
}
