package main

import (
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/hostfs"
)

// useHostViews points the pin dir (and the cgroup dir, when given) at the host's tree when meshcap runs in a
// private mount namespace that hides them, as `ip netns exec` does with /sys: capture set up from there must land on
// the host's bpffs and cgroups, where it outlives this process and where everything else finds it.
func useHostViews(log *zap.Logger, pinRoot, cgroupDir *string) {
	if pinRoot != nil {
		if v, ok := hostfs.HostView(*pinRoot, unix.BPF_FS_MAGIC); ok {
			log.Info("pin dir hidden in this mount namespace (ip netns exec?): using the host's", zap.String("pinDir", v))
			*pinRoot = v
		}
	}
	if cgroupDir != nil && *cgroupDir != "" {
		if v, ok := hostfs.HostView(*cgroupDir, unix.CGROUP2_SUPER_MAGIC); ok {
			log.Info("cgroup hidden in this mount namespace (ip netns exec?): using the host's", zap.String("cgroup", v))
			*cgroupDir = v
		}
	}
}

// throwawayBPFFS mounts bpffs at /sys/fs/bpf for the demo and the benchmark when none is there, even in a private
// mount namespace: their pins live no longer than they do. A fresh machine (nothing mounted, /proc/1/ns/mnt not
// readable) then works as it is.
func throwawayBPFFS(log *zap.Logger) error {
	mounted, err := hostfs.EnsureBPFFS(hostfs.BPFFSMount, true)
	if mounted {
		log.Info("mounted a bpf filesystem (none was mounted)", zap.String("path", hostfs.BPFFSMount))
	}
	return err
}
