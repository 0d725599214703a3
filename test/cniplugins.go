package test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Pinned versions of the reference CNI plugins and cnitool (NOTES.md: they install from the Go module proxy).
const (
	CNIPluginsVersion = "v1.10.0"
	CNIToolVersion    = "v1.3.0"
)

// CNIPluginNames are the executables InstallCNIPlugins puts in its directory.
var CNIPluginNames = []string{"bridge", "host-local", "loopback", "cnitool"}

// ErrModuleProxyUnreachable marks an install that failed because the Go module proxy could not be reached.
var ErrModuleProxyUnreachable = errors.New("Go module proxy unreachable")

// CNIPluginsDir is the directory under cacheRoot that holds the pinned plugins (one per version pair and flavor).
func CNIPluginsDir(cacheRoot, flavor string) string {
	return filepath.Join(cacheRoot, "cni-plugins-"+CNIPluginsVersion+"-cnitool-"+CNIToolVersion+flavor)
}

// HaveCNIPlugins reports whether dir holds every plugin, executable.
func HaveCNIPlugins(dir string) bool {
	for _, n := range CNIPluginNames {
		if fi, err := os.Stat(filepath.Join(dir, n)); err != nil || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// InstallCNIPlugins `go install`s the pinned plugins and cnitool into dir unless they are there already; env is
// added to the go command's environment (CGO_ENABLED=0 for static binaries). The directory appears complete or not
// at all. A failure to reach the module proxy wraps ErrModuleProxyUnreachable.
func InstallCNIPlugins(dir string, env ...string) error {
	if HaveCNIPlugins(dir) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("install CNI plugins: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".install-")
	if err != nil {
		return fmt.Errorf("install CNI plugins: %w", err)
	}
	defer os.RemoveAll(tmp)
	p := "github.com/containernetworking/plugins/plugins/"
	for _, pkgs := range [][]string{
		{p + "main/bridge@" + CNIPluginsVersion, p + "ipam/host-local@" + CNIPluginsVersion, p + "main/loopback@" + CNIPluginsVersion},
		{"github.com/containernetworking/cni/cnitool@" + CNIToolVersion},
	} {
		cmd := exec.Command("go", append([]string{"install"}, pkgs...)...)
		cmd.Dir = tmp // outside the module: `go install pkg@version` builds the pinned version only
		cmd.Env = append(append(os.Environ(), "GOBIN="+tmp, "GOFLAGS=-buildvcs=false"), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			if unreachable(string(out)) {
				err = errors.Join(ErrModuleProxyUnreachable, err)
			}
			return fmt.Errorf("go install %s: %w\n%s", strings.Join(pkgs, " "), err, out)
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("install CNI plugins: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil && !HaveCNIPlugins(dir) {
		return fmt.Errorf("cache CNI plugins: %w", err)
	}
	return nil
}

func unreachable(out string) bool {
	for _, s := range []string{"dial tcp", "no such host", "connection refused", "i/o timeout", "proxyconnect", "TLS handshake", "network is unreachable"} {
		if strings.Contains(out, s) {
			return true
		}
	}
	return false
}
