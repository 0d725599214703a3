package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// InstallOptions describe the CNI install step of the DaemonSet (run as its init container).
type InstallOptions struct {
	SrcBinary string // the meshcap-cni binary to copy
	BinDir    string // host CNI bin dir (/opt/cni/bin)
	ConfDir   string // host CNI conf dir (/etc/cni/net.d)
	Entry     []byte // the plugin's conflist entry (JSON object with "type": "meshcap-cni")
}

// PrimaryConf returns the file the runtime uses: the lexically first *.conflist, *.conf or *.json in dir.
func PrimaryConf(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("read CNI conf dir: %w", err)
	}
	var names []string
	for _, e := range ents {
		ext := filepath.Ext(e.Name())
		if !e.IsDir() && (ext == ".conflist" || ext == ".conf" || ext == ".json") {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("no CNI network configuration in %s yet (is the primary CNI installed?)", dir)
	}
	slices.Sort(names)
	return filepath.Join(dir, names[0]), nil
}

// Install copies the binary and chains the entry at the end of the primary network configuration
// (replacing an earlier meshcap-cni entry). A single-plugin .conf becomes a .conflist. Idempotent.
// It returns the configuration file written.
func Install(o InstallOptions) (string, error) {
	var entry map[string]any
	if err := json.Unmarshal(o.Entry, &entry); err != nil {
		return "", fmt.Errorf("invalid plugin entry: %w", err)
	}
	if entry["type"] != PluginType {
		return "", fmt.Errorf("invalid plugin entry: type %v, want %q", entry["type"], PluginType)
	}
	if _, err := ParseConf(o.Entry); err != nil {
		return "", fmt.Errorf("invalid plugin entry: %w", err)
	}
	conf, err := PrimaryConf(o.ConfDir)
	if err != nil {
		return "", err
	}
	list, err := readConfList(conf)
	if err != nil {
		return "", err
	}
	plugins := withoutMeshcap(list["plugins"].([]any))
	list["plugins"] = append(plugins, entry)

	if err := copyFileAtomic(o.SrcBinary, filepath.Join(o.BinDir, PluginType), 0o755); err != nil {
		return "", fmt.Errorf("install %s binary: %w", PluginType, err)
	}
	out := conf
	if filepath.Ext(conf) != ".conflist" {
		out = strings.TrimSuffix(conf, filepath.Ext(conf)) + ".conflist"
	}
	if err := writeJSONAtomic(out, list); err != nil {
		return "", err
	}
	if out != conf {
		if err := os.Remove(conf); err != nil {
			return "", fmt.Errorf("remove converted %s: %w", conf, err)
		}
	}
	return out, nil
}

// Uninstall removes meshcap-cni entries from every conflist in ConfDir and the binary from BinDir.
func Uninstall(binDir, confDir string) ([]string, error) {
	files, _ := filepath.Glob(filepath.Join(confDir, "*.conflist"))
	var changed []string
	for _, f := range files {
		list, err := readConfList(f)
		if err != nil {
			continue // not ours to judge
		}
		plugins := list["plugins"].([]any)
		kept := withoutMeshcap(plugins)
		if len(kept) == len(plugins) {
			continue
		}
		list["plugins"] = kept
		if err := writeJSONAtomic(f, list); err != nil {
			return changed, err
		}
		changed = append(changed, f)
	}
	if err := os.Remove(filepath.Join(binDir, PluginType)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return changed, fmt.Errorf("remove %s binary: %w", PluginType, err)
	}
	return changed, nil
}

func withoutMeshcap(plugins []any) []any {
	var out []any
	for _, p := range plugins {
		if m, ok := p.(map[string]any); ok && m["type"] == PluginType {
			continue
		}
		out = append(out, p)
	}
	return out
}

// readConfList reads a .conflist, or a single-plugin .conf/.json converted into a list.
func readConfList(path string) (map[string]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	if p, ok := m["plugins"]; ok {
		if _, ok := p.([]any); !ok {
			return nil, fmt.Errorf("parse %s: \"plugins\" is not a list", path)
		}
		return m, nil
	}
	if _, ok := m["type"]; !ok {
		return nil, fmt.Errorf("parse %s: neither a conflist nor a plugin configuration", path)
	}
	list := map[string]any{"cniVersion": m["cniVersion"], "name": m["name"]}
	delete(m, "name")
	list["plugins"] = []any{m}
	return list, nil
}

func writeJSONAtomic(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".meshcap-*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func copyFileAtomic(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".meshcap-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}
