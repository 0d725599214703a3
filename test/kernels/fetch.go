package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshcap/meshcap/test/kernels/matrix"
)

// kernelTree is one kernel, unpacked: its image and its modules directory (<root>/lib/modules/<version>).
type kernelTree struct {
	version string // uname -r
	vmlinuz string
	modules string
}

// aptState is a private apt configuration for one suite: its own sources list, lists and cache under dir. The
// machine's own apt sources and state are never read or written.
type aptState struct{ dir, suite, mirror string }

func (a aptState) opts() []string {
	return []string{
		"-o", "Dir::Etc::sourcelist=" + filepath.Join(a.dir, "sources.list"),
		"-o", "Dir::Etc::sourceparts=/dev/null",
		"-o", "Dir::State::Lists=" + filepath.Join(a.dir, "lists"),
		"-o", "Dir::Cache=" + filepath.Join(a.dir, "cache"),
		"-o", "APT::Sandbox::User=root", // downloads land in our root-owned cache
		"-o", "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
	}
}

func (a aptState) run(dir, tool string, args ...string) (string, error) {
	cmd := exec.Command(tool, append(a.opts(), args...)...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s (%s): %w: %s", tool, strings.Join(args, " "), a.suite, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// update refreshes the suite's package lists when they are missing or older than a day.
func (a aptState) update() error {
	for _, d := range []string{"lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(a.dir, d), 0o755); err != nil {
			return err
		}
	}
	src := fmt.Sprintf("deb %s %s main\n", a.mirror, a.suite)
	stamp := filepath.Join(a.dir, "updated")
	if old, err := os.ReadFile(filepath.Join(a.dir, "sources.list")); err == nil && string(old) == src {
		if fi, err := os.Stat(stamp); err == nil && time.Since(fi.ModTime()) < 24*time.Hour {
			return nil
		}
	}
	if err := os.WriteFile(filepath.Join(a.dir, "sources.list"), []byte(src), 0o644); err != nil {
		return err
	}
	if _, err := a.run(a.dir, "apt-get", "-q", "update"); err != nil {
		return err
	}
	return os.WriteFile(stamp, nil, 0o644)
}

// fetchKernel downloads k's packages with a private apt state and unpacks them under cache; both steps are cached.
func fetchKernel(cache, mirror string, k matrix.Kernel) (kernelTree, error) {
	apt := aptState{dir: filepath.Join(cache, "apt", k.Suite), suite: k.Suite, mirror: mirror}
	if err := apt.update(); err != nil {
		return kernelTree{}, err
	}
	names, err := apt.run(apt.dir, "apt-cache", "pkgnames", "linux-")
	if err != nil {
		return kernelTree{}, err
	}
	pkgs, err := k.Packages(strings.Fields(names))
	if err != nil {
		return kernelTree{}, err
	}
	root := filepath.Join(cache, "trees", strings.Join(pkgs, "+"))
	if _, err := os.Stat(filepath.Join(root, ".complete")); err != nil {
		if err := unpack(apt, root, pkgs); err != nil {
			return kernelTree{}, fmt.Errorf("kernel %s: %w", k.Name, err)
		}
	}
	return findKernel(root)
}

// unpack downloads pkgs and `dpkg -x`es them into root (made complete, or removed).
func unpack(apt aptState, root string, pkgs []string) error {
	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(root), ".unpack-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	debs := filepath.Join(tmp, ".debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return err
	}
	if _, err := apt.run(debs, "apt-get", append([]string{"-q", "download"}, pkgs...)...); err != nil {
		return err
	}
	files, _ := filepath.Glob(filepath.Join(debs, "*.deb"))
	if len(files) != len(pkgs) {
		return fmt.Errorf("downloaded %d files for %d packages", len(files), len(pkgs))
	}
	for _, f := range files {
		if out, err := exec.Command("dpkg", "-x", f, tmp).CombinedOutput(); err != nil {
			return fmt.Errorf("dpkg -x %s: %w: %s", filepath.Base(f), err, out)
		}
	}
	if err := os.RemoveAll(debs); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), []byte(strings.Join(pkgs, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, root); err != nil && !exists(filepath.Join(root, ".complete")) {
		return err // (another run may have unpacked the same packages meanwhile: then theirs is used)
	}
	return nil
}

// findKernel locates the image (boot/vmlinuz-<v>, or usr/lib/modules/<v>/vmlinuz in sid's packages) and the
// modules (lib/modules/<v> or usr/lib/modules/<v>) in an unpacked tree.
func findKernel(root string) (kernelTree, error) {
	imgs, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	v := ""
	if len(imgs) == 1 {
		v = strings.TrimPrefix(filepath.Base(imgs[0]), "vmlinuz-")
	} else if imgs, _ = filepath.Glob(filepath.Join(root, "usr/lib/modules/*/vmlinuz")); len(imgs) == 1 {
		v = filepath.Base(filepath.Dir(imgs[0]))
	} else {
		return kernelTree{}, fmt.Errorf("%s: want one boot/vmlinuz-* or usr/lib/modules/*/vmlinuz", root)
	}
	for _, d := range []string{"lib/modules", "usr/lib/modules"} {
		if fi, err := os.Stat(filepath.Join(root, d, v)); err == nil && fi.IsDir() {
			return kernelTree{version: v, vmlinuz: imgs[0], modules: filepath.Join(root, d, v)}, nil
		}
	}
	return kernelTree{}, errors.New(root + ": no modules directory for " + v)
}
