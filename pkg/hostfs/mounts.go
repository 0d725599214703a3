package hostfs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Mount is one line of /proc/self/mountinfo: where a filesystem is mounted and its type.
type Mount struct{ Point, FSType string }

// Mounts lists this process's mounts, with mountinfo's octal escapes (\040 for a space) decoded.
func Mounts() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var out []Mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// 41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f1, f2 := strings.Fields(pre), strings.Fields(post)
		if len(f1) < 5 || len(f2) < 1 {
			continue
		}
		out = append(out, Mount{Point: unescapeMount(f1[4]), FSType: f2[0]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	return out, nil
}

// Cgroup2Mount returns this mount namespace's mount point of the cgroup v2 hierarchy (/sys/fs/cgroup on a pure
// v2 host, /sys/fs/cgroup/unified on a hybrid one).
func Cgroup2Mount() (string, error) {
	mounts, err := Mounts()
	if err != nil {
		return "", err
	}
	for _, m := range mounts {
		if m.FSType == "cgroup2" {
			return m.Point, nil
		}
	}
	return "", errors.New("no cgroup2 filesystem mounted (cgroup v2 is required for eBPF capture)")
}

// unescapeMount decodes the octal escapes (\040 for a space) of mountinfo paths.
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
