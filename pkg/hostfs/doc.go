// Package hostfs is the one home of the host facts meshcap needs: which filesystem a path is on (bpffs,
// cgroup2), where cgroup v2 is mounted, the id of a cgroup and whether the kernel still has it, a network
// namespace's cookie, the host's view of a path hidden by a private mount namespace (`ip netns exec`), and
// mounting bpffs where none is.
//
// Invariants:
//   - Nothing here imports cilium/ebpf or changes capture state; the only host change is EnsureBPFFS's mount.
//   - A cgroup is reported gone only on the kernel's word (CgroupGone: its id no longer resolves), never because a
//     path cannot be seen.
//   - NetnsCookie/SocketNetnsCookie are the SO_NETNS_COOKIE reads (Linux 5.14+) behind loader.NetnsCookie, the one
//     owner of a netns cookie in Go (it also reads one on older kernels, with a BPF program). NetnsInodeID is the
//     stand-in loader.NetnsID names a netns by where no cookie can be read: the nsfs inode marked so that
//     IsNetnsCookie is false; such an id is never used as a BPF key.
package hostfs
