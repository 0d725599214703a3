// Package hostfs is the one home of the host facts meshcap needs: which filesystem a path is on (bpffs,
// cgroup2), where cgroup v2 is mounted, the id of a cgroup and whether the kernel still has it, a network
// namespace's cookie, the host's view of a path hidden by a private mount namespace (`ip netns exec`), and
// mounting bpffs where none is.
//
// Invariants:
//   - Nothing here imports cilium/ebpf or changes capture state; the only host change is EnsureBPFFS's mount.
//   - A cgroup is reported gone only on the kernel's word (CgroupGone: its id no longer resolves), never because a
//     path cannot be seen.
//   - NetnsCookie/SocketNetnsCookie are the only Go readers of a netns cookie (SO_NETNS_COOKIE, Linux 5.14+).
//     NetnsID/SocketNetnsID/OwnNetnsID name a netns for userspace bookkeeping: the cookie, or before 5.14 the nsfs
//     inode marked so that IsNetnsCookie is false; such an id is never used as a BPF key.
package hostfs
