package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	e2e "github.com/meshcap/meshcap/test"
)

// buildBins builds, static (CGO_ENABLED=0: the guest has no libc of the host's version to spare), everything the
// guest runs: meshcap, meshcap-cni, nettool, this program, the e2e test binary, and the reference CNI plugins.
func buildBins(cache, out string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	static := append(os.Environ(), "CGO_ENABLED=0")
	builds := [][]string{
		{"build", "-o", filepath.Join(out, "meshcap"), "./cmd/meshcap"},
		{"build", "-o", filepath.Join(out, "meshcap-cni"), "./cmd/meshcap-cni"},
		{"build", "-o", filepath.Join(out, "nettool"), "./test/nettool"},
		{"build", "-o", filepath.Join(out, "matrix"), "./test/kernels"},
		{"test", "-c", "-o", filepath.Join(out, "e2e.test"), "./test"},
	}
	for _, args := range builds {
		cmd := exec.Command("go", args...)
		cmd.Env = static
		if o, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %v: %w\n%s", args, err, o)
		}
	}
	cni := e2e.CNIPluginsDir(filepath.Join(cache, "go"), "-static")
	if err := e2e.InstallCNIPlugins(cni, "CGO_ENABLED=0"); err != nil {
		return err
	}
	for _, n := range e2e.CNIPluginNames {
		if err := copyFile(filepath.Join(cni, n), filepath.Join(out, n)); err != nil {
			return err
		}
	}
	return nil
}
