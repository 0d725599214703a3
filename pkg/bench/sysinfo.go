package bench

import (
	"bufio"
	"os"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// SysInfo describes the machine a report was measured on.
type SysInfo struct {
	CPU    string `json:"cpu"`
	CPUs   int    `json:"cpus"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
	Host   string `json:"host"`
}

// CollectSysInfo reads /proc/cpuinfo and uname; missing pieces stay empty.
func CollectSysInfo() SysInfo {
	si := SysInfo{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		si.Kernel = unix.ByteSliceToString(u.Release[:])
		si.Host = unix.ByteSliceToString(u.Machine[:])
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				si.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return si
}
