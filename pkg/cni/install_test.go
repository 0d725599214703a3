package cni

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func TestInstallChainsAndUninstalls(t *testing.T) {
	bin, confDir, src := t.TempDir(), t.TempDir(), filepath.Join(t.TempDir(), "meshcap-cni")
	if err := os.WriteFile(src, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Install(InstallOptions{SrcBinary: src, BinDir: bin, ConfDir: confDir, Entry: []byte(`{"type":"meshcap-cni"}`)}); err == nil {
		t.Fatal("install without a primary conf succeeded")
	}
	// A single-plugin .conf (lexically first) is converted; the later file is left alone.
	os.WriteFile(filepath.Join(confDir, "10-flannel.conf"), []byte(`{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","delegate":{"isDefaultGateway":true}}`), 0o644)
	os.WriteFile(filepath.Join(confDir, "99-other.conflist"), []byte(`{"cniVersion":"1.0.0","name":"o","plugins":[{"type":"ptp"}]}`), 0o644)
	entry := []byte(`{"type":"meshcap-cni","enroll":"all","capabilities":{"io.kubernetes.cri.pod-annotations":true}}`)
	for i := 0; i < 2; i++ {
		out, err := Install(InstallOptions{SrcBinary: src, BinDir: bin, ConfDir: confDir, Entry: entry})
		if err != nil {
			t.Fatal(err)
		}
		if out != filepath.Join(confDir, "10-flannel.conflist") {
			t.Fatalf("wrote %s", out)
		}
	}
	if _, err := os.Stat(filepath.Join(confDir, "10-flannel.conf")); !os.IsNotExist(err) {
		t.Fatalf(".conf not replaced: %v", err)
	}
	var list struct {
		Name    string           `json:"name"`
		Plugins []map[string]any `json:"plugins"`
	}
	data, _ := os.ReadFile(filepath.Join(confDir, "10-flannel.conflist"))
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatal(err)
	}
	if list.Name != "cbr0" || len(list.Plugins) != 2 || list.Plugins[0]["type"] != "flannel" || list.Plugins[1]["type"] != "meshcap-cni" {
		t.Fatalf("conflist: %s", data)
	}
	if fi, err := os.Stat(filepath.Join(bin, "meshcap-cni")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("binary: %v %v", fi, err)
	}
	if _, err := Install(InstallOptions{SrcBinary: src, BinDir: bin, ConfDir: confDir, Entry: []byte(`{"type":"meshcap-cni","enroll":"some"}`)}); err == nil {
		t.Fatal("bad entry accepted")
	}
	changed, err := Uninstall(bin, confDir)
	if err != nil || len(changed) != 1 {
		t.Fatalf("uninstall: %v %v", changed, err)
	}
	data, _ = os.ReadFile(filepath.Join(confDir, "10-flannel.conflist"))
	json.Unmarshal(data, &list)
	if len(list.Plugins) != 1 {
		t.Fatalf("after uninstall: %s", data)
	}
	if _, err := os.Stat(filepath.Join(bin, "meshcap-cni")); !os.IsNotExist(err) {
		t.Fatal("binary left")
	}
}
