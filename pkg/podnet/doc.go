// Package podnet builds throwaway "pods" for the demo, the benchmark and the end-to-end tests: a pod is a named
// network namespace (/var/run/netns/NAME, loopback up) plus a cgroup v2 directory under the cgroup2 mount.
//
// Invariants:
//   - Everything a Pod makes is removed by Close, which is idempotent and also kills processes left in its cgroup.
//   - Processes are started inside a pod without a race: the child is forked from an OS thread that has entered the
//     pod's netns, and is placed in the pod's cgroup at clone time (CLONE_INTO_CGROUP).
//   - A listener made with Pod.Listen lives in the pod's netns but belongs to the caller's cgroup, so cgroup BPF
//     programs attached to the pod never see it.
package podnet
