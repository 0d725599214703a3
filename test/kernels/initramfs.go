package main

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

//go:embed init.sh
var initScript []byte

// guestBinDir is where the prebuilt meshcap, test and CNI binaries live inside the VM; guestSrcDir holds the
// source files the tests read.
const (
	guestBinDir = "/opt/meshcap/bin"
	guestSrcDir = "/opt/meshcap/src"
)

// mergedUsr lays out root as a merged-/usr Debian system, so that libraries copied to the paths ldd prints land
// in one place.
func mergedUsr(root string) error {
	if err := os.Chmod(root, 0o755); err != nil { // a 0700 root: an app dropped to uid 2000 can exec nothing
		return err
	}
	for _, d := range []string{"usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "proc", "sys", "dev", "run", "tmp", "etc", "root", "var", "opt/meshcap/bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	for _, l := range []string{"bin", "sbin", "lib", "lib64"} {
		if err := os.Symlink("usr/"+l, filepath.Join(root, l)); err != nil {
			return err
		}
	}
	return os.Symlink("/run", filepath.Join(root, "var/run")) // netns bind mounts live under /var/run/netns
}

// addTool copies the host's path (symlinks resolved) and the libraries ldd lists into root; when path is a symlink,
// the guest gets a symlink to the same final target (multi-call binaries dispatch on their name).
func addTool(root, path string) error {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return fmt.Errorf("tool %s: %w", path, err)
	}
	if err := copyFile(real, filepath.Join(root, real)); err != nil {
		return err
	}
	if err := addLibs(root, real); err != nil {
		return err
	}
	if dst := filepath.Join(root, path); path != real && !exists(dst) {
		return os.Symlink(real, dst)
	}
	return nil
}

var lddPath = regexp.MustCompile(`(?m)(?:=> )?(/\S+) \(0x`)

// addLibs copies the shared libraries (and the dynamic loader) that bin needs.
func addLibs(root, bin string) error {
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil // static: "not a dynamic executable"
	}
	for _, m := range lddPath.FindAllStringSubmatch(string(out), -1) {
		if dst := filepath.Join(root, m[1]); !exists(dst) {
			if err := copyFile(m[1], dst); err != nil {
				return err
			}
		}
	}
	return nil
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

// copyFile copies src (following symlinks) to dst with src's permission bits.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// hostTools are the programs the guest needs, by name: found on the host's PATH (sbin included). The tests run
// curl, bash, haproxy and redsocks; nft is for the nftables backend.
var hostTools = []string{"ip", "kmod", "nsenter", "unshare", "xtables-legacy-multi", "xtables-nft-multi", "curl", "bash", "nft", "haproxy", "redsocks"}

// optionalTools may be missing on the host: the tests that need them then fail in the VM, and say why.
var optionalTools = map[string]bool{"nft": true, "haproxy": true, "redsocks": true}

// iptablesNames matches the iptables front ends (legacy, nft and the alternative-chosen plain names).
var iptablesNames = regexp.MustCompile(`^(ip6?tables|arptables|ebtables)(-legacy|-nft)?(-save|-restore)?$`)

// addUserland installs busybox (every applet not provided by a real tool), the tools, iptables' extensions, the
// kmod names and a minimal /etc.
func addUserland(root string) error {
	for _, name := range hostTools {
		p, err := exec.LookPath(name)
		if err != nil {
			if optionalTools[name] {
				fmt.Fprintf(os.Stderr, "test-kernels: %s not installed, the VM will not have it\n", name)
				continue
			}
			return fmt.Errorf("%s is needed in the VM: %w", name, err)
		}
		if err := addTool(root, p); err != nil {
			return err
		}
	}
	for _, dir := range []string{"/usr/sbin"} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if iptablesNames.MatchString(e.Name()) {
				if err := addTool(root, filepath.Join(dir, e.Name())); err != nil {
					return err
				}
			}
		}
	}
	exts, _ := filepath.Glob("/usr/lib/x86_64-linux-gnu/xtables/*.so")
	for _, e := range exts {
		if err := addTool(root, e); err != nil {
			return err
		}
	}
	for _, n := range []string{"modprobe", "insmod", "rmmod", "lsmod", "depmod", "modinfo"} {
		if err := os.Symlink("/usr/bin/kmod", filepath.Join(root, "usr/sbin", n)); err != nil {
			return err
		}
	}
	if err := addBusybox(root); err != nil {
		return err
	}
	etc := map[string]string{
		"passwd":        "root:x:0:0:root:/root:/bin/sh\n",
		"group":         "root:x:0:\n",
		"nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\nprotocols: files\nservices: files\n",
		"hosts":         "127.0.0.1 localhost\n",
		// A nameserver as pods have one: istio's DNS rules (and the tests that bind-mount their own) need the file.
		"resolv.conf": "nameserver 198.18.255.53\n",
	}
	for name, data := range etc {
		if err := os.WriteFile(filepath.Join(root, "etc", name), []byte(data), 0o644); err != nil {
			return err
		}
	}
	for _, f := range []string{"/etc/protocols", "/etc/services"} {
		if err := copyFile(f, filepath.Join(root, f)); err != nil {
			return err
		}
	}
	return nil
}

// addBusybox installs busybox-static and a link for each applet that no real tool provides. Its applet list
// names busybox itself: linking that would make a loop.
func addBusybox(root string) error {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("busybox-static is needed in the VM: %w", err)
	}
	if err := copyFile(bb, filepath.Join(root, "usr/bin/busybox")); err != nil {
		return err
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, a := range strings.Fields(string(out)) {
		if a == "busybox" || exists(filepath.Join(root, "usr/bin", a)) || exists(filepath.Join(root, "usr/sbin", a)) {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(root, "usr/bin", a)); err != nil {
			return err
		}
	}
	return nil
}

// buildCommon makes the kernel-independent part of the initramfs: /init, the userland, the prebuilt binaries
// (copied from bins) and the guest's configuration.
func buildCommon(work, bins string, cfg guestConfig) (string, error) {
	root := filepath.Join(work, "common")
	os.RemoveAll(root)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", err
	}
	if err := mergedUsr(root); err != nil {
		return "", err
	}
	if err := addUserland(root); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(root, "init"), initScript, 0o755); err != nil {
		return "", err
	}
	ents, err := os.ReadDir(bins)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		if err := copyFile(filepath.Join(bins, e.Name()), filepath.Join(root, guestBinDir, e.Name())); err != nil {
			return "", err
		}
	}
	// The e2e tests read a few files relative to the test package's directory (../deploy, ../testdata).
	if err := os.MkdirAll(filepath.Join(root, guestSrcDir, "test"), 0o755); err != nil {
		return "", err
	}
	for _, d := range []string{"deploy", "testdata"} {
		if out, err := exec.Command("cp", "-a", d, filepath.Join(root, guestSrcDir, d)).CombinedOutput(); err != nil {
			return "", fmt.Errorf("copy %s: %w: %s", d, err, out)
		}
	}
	cfg.BinDir, cfg.TestDir = guestBinDir, filepath.Join(guestSrcDir, "test")
	data, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(filepath.Join(root, "opt/meshcap/matrix.json"), data, 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(work, "common.cpio")
	return out, makeCpio(root, out, true)
}

// moduleDirs are the parts of a kernel's modules the guest gets: networking (netfilter, bridge, sock_diag, ...)
// with the libraries and crypto it depends on, and veth.
var moduleDirs = []string{"kernel/net", "kernel/lib", "kernel/crypto", "kernel/arch/x86/crypto", "kernel/drivers/net/veth.ko*"}

// buildModules makes the initramfs part holding k's modules at /usr/lib/modules/<version>, with the modules.dep
// that depmod -b writes (Debian's packages ship none: their postinst makes it). Cached in dir per kernel version.
func buildModules(dir string, k kernelTree) (string, error) {
	out := filepath.Join(dir, "modules-"+k.version+".cpio")
	if exists(out) {
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	root, err := os.MkdirTemp(dir, ".modules-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(root)
	dst := filepath.Join(root, "usr/lib/modules", k.version)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return "", err
	}
	for _, pat := range append(moduleDirs, "modules.order", "modules.builtin", "modules.builtin.modinfo") {
		matches, _ := filepath.Glob(filepath.Join(k.modules, pat))
		for _, m := range matches {
			rel, _ := filepath.Rel(k.modules, m)
			if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, rel)), 0o755); err != nil {
				return "", err
			}
			if out, err := exec.Command("cp", "-a", m, filepath.Join(dst, rel)).CombinedOutput(); err != nil {
				return "", fmt.Errorf("copy modules %s: %w: %s", rel, err, out)
			}
		}
	}
	if out, err := exec.Command("depmod", "-b", filepath.Join(root, "usr"), k.version).CombinedOutput(); err != nil {
		return "", fmt.Errorf("depmod %s: %w: %s", k.version, err, out)
	}
	tmp := root + ".cpio"
	defer os.Remove(tmp)
	if err := makeCpio(root, tmp, false); err != nil {
		return "", err
	}
	return out, os.Rename(tmp, out)
}

// makeCpio archives dir as an uncompressed newc cpio owned by root. withRoot includes "." itself, which sets the
// mode of the guest's / (0755 here).
func makeCpio(dir, out string, withRoot bool) error {
	find := "find . -mindepth 1"
	if withRoot {
		find = "find ."
	}
	cmd := exec.Command("sh", "-c", find+" | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet > "+shellQuote(out))
	cmd.Dir = dir
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cpio %s: %w: %s", dir, err, o)
	}
	return nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// concatInitrd writes the parts one after the other: the kernel unpacks concatenated newc archives in order.
func concatInitrd(out string, parts ...string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	for _, p := range parts {
		in, err := os.Open(p)
		if err != nil {
			f.Close()
			return err
		}
		_, err = io.Copy(f, in)
		in.Close()
		if err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}
