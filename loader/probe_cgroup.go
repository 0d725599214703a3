package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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
