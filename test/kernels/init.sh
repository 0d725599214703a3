#!/bin/sh
# /init of the kernel matrix's initramfs (busybox sh, pid 1). Mounts what meshcap and its tests need, then runs
# the matrix's guest mode, which prints result markers on the serial console, and powers off.
# MATRIX_CGROUP=v1 (kernel command line) boots with cgroup v1 controllers only and no cgroup2 anywhere.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/opt/meshcap/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
if [ "$MATRIX_CGROUP" = v1 ]; then
	mount -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup
	for c in cpu,cpuacct memory pids net_cls,net_prio devices; do
		mkdir -p /sys/fs/cgroup/$c
		mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c
	done
else
	mount -t cgroup2 cgroup2 /sys/fs/cgroup
fi
# The kernel's module autoload runs this path; sock_diag, netfilter and bridge modules come through it.
echo /sbin/modprobe > /proc/sys/kernel/modprobe
/usr/sbin/modprobe veth # kmod: busybox sh would run its own applet, which cannot read .ko.xz
/usr/bin/ip link set lo up
hostname matrix
/opt/meshcap/bin/matrix guest -config /opt/meshcap/matrix.json -vm
poweroff -f
