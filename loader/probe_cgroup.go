package loader

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// FindPodCgroup finds a Kubernetes pod's cgroup under a cgroup v2 tree (the host's, mounted at root): the directory
// named for the pod UID by the kubelet, "pod<uid>" with the cgroupfs driver ("/kubepods/burstable/pod<uid>") or
// "kubepods-<qos>-pod<uid with _>.slice" with the systemd driver. Exactly one match is required.
func FindPodCgroup(root, podUID string) (string, error) {
	if podUID == "" || strings.ContainsAny(podUID, "/.") {
		return "", fmt.Errorf("invalid pod UID %q", podUID)
	}
	names := []string{"pod" + podUID, "pod" + strings.ReplaceAll(podUID, "-", "_")}
	var found []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == root {
				return err
			}
			return fs.SkipDir
		}
		if !d.IsDir() {
			return nil
		}
		if rel, _ := filepath.Rel(root, path); strings.Count(rel, string(filepath.Separator)) >= 4 {
			return fs.SkipDir // pod cgroups are at most 3 levels down (kubepods.slice/kubepods-burstable.slice/...)
		}
		base := d.Name()
		for _, n := range names {
			if base == n || strings.HasSuffix(base, "-"+n+".slice") {
				found = append(found, path)
				return fs.SkipDir
			}
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("find cgroup of pod %s under %s: %w", podUID, root, err)
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("find cgroup of pod %s under %s: %w", podUID, root, os.ErrNotExist)
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("find cgroup of pod %s under %s: %w: %v", podUID, root, errors.New("several matches"), found)
}

// makeTempCgroup makes a fresh, uniquely named cgroup under parent for a moment's use (the probe's attach checks,
// the netns cookie reader): "<prefix>-<pid>-<random>". removeTempCgroup removes it.
func makeTempCgroup(parent, prefix string) (string, error) {
	var sfx [4]byte
	_, _ = rand.Read(sfx[:])
	dir := filepath.Join(parent, fmt.Sprintf("%s-%d-%s", prefix, os.Getpid(), hex.EncodeToString(sfx[:])))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", fmt.Errorf("create temporary cgroup: %w", err)
	}
	return dir, nil
}

// removeTempCgroup removes a cgroup made by makeTempCgroup. A process that just exited may keep it busy for a
// moment, so EBUSY is retried for up to a second.
func removeTempCgroup(dir string) {
	for i := 0; i < 100; i++ {
		if err := os.Remove(dir); err == nil || !errors.Is(err, unix.EBUSY) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
