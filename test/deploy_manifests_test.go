package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshcap/meshcap/pkg/cni"
)

// manifestTypes maps apiVersion/kind to the Kubernetes API type a document must strictly decode into.
var manifestTypes = map[string]func() any{
	"v1/Namespace":       func() any { return &corev1.Namespace{} },
	"v1/ServiceAccount":  func() any { return &corev1.ServiceAccount{} },
	"v1/ConfigMap":       func() any { return &corev1.ConfigMap{} },
	"v1/Pod":             func() any { return &corev1.Pod{} },
	"apps/v1/DaemonSet":  func() any { return &appsv1.DaemonSet{} },
	"apps/v1/Deployment": func() any { return &appsv1.Deployment{} },
	"rbac.authorization.k8s.io/v1/ClusterRole":        func() any { return &rbacv1.ClusterRole{} },
	"rbac.authorization.k8s.io/v1/ClusterRoleBinding": func() any { return &rbacv1.ClusterRoleBinding{} },
}

type manifestDoc struct {
	file, kind, name string
	obj              any
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeManifests strict-decodes every YAML document under deploy/ (unknown or misspelt fields are errors).
func decodeManifests(t *testing.T) []manifestDoc {
	t.Helper()
	files, err := filepath.Glob("../deploy/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in deploy/: %v", err)
	}
	var docs []manifestDoc
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, part := range docSep.Split(string(data), -1) {
			js, err := yaml.YAMLToJSON([]byte(part))
			if err != nil {
				t.Errorf("%s doc %d: %v", f, i, err)
				continue
			}
			if s := strings.TrimSpace(string(js)); s == "null" || s == "{}" {
				continue // comments only
			}
			var tm struct{ APIVersion, Kind string }
			if err := json.Unmarshal(js, &tm); err != nil || tm.APIVersion == "" || tm.Kind == "" {
				t.Errorf("%s doc %d: no apiVersion/kind (%v)", f, i, err)
				continue
			}
			mk, ok := manifestTypes[tm.APIVersion+"/"+tm.Kind]
			if !ok {
				t.Errorf("%s doc %d: %s/%s has no Go type in this test: add it", f, i, tm.APIVersion, tm.Kind)
				continue
			}
			obj := mk()
			dec := json.NewDecoder(bytes.NewReader(js))
			dec.DisallowUnknownFields()
			if err := dec.Decode(obj); err != nil {
				t.Errorf("%s doc %d (%s): strict decode: %v", f, i, tm.Kind, err)
				continue
			}
			var meta struct {
				Metadata struct{ Name string } `json:"metadata"`
			}
			_ = json.Unmarshal(js, &meta)
			if meta.Metadata.Name == "" {
				t.Errorf("%s doc %d (%s): no metadata.name", f, i, tm.Kind)
			}
			docs = append(docs, manifestDoc{file: filepath.Base(f), kind: tm.Kind, name: meta.Metadata.Name, obj: obj})
		}
	}
	return docs
}

func TestDeployManifestsStrictDecode(t *testing.T) {
	docs := decodeManifests(t)
	var kinds []string
	for _, d := range docs {
		kinds = append(kinds, d.file+":"+d.kind+"/"+d.name)
	}
	t.Logf("decoded: %v", kinds)
	for _, want := range []string{"daemonset.yaml:DaemonSet/meshcap-agent", "daemonset.yaml:ConfigMap/meshcap-cni", "istio-init-patch.yaml:Deployment/example-app"} {
		if !slices.Contains(kinds, want) {
			t.Errorf("missing %s", want)
		}
	}
}

func findDoc[T any](t *testing.T, docs []manifestDoc, kind string) T {
	t.Helper()
	for _, d := range docs {
		if d.kind == kind {
			return d.obj.(T)
		}
	}
	t.Fatalf("no %s", kind)
	var zero T
	return zero
}

// The DaemonSet has only the privileges and host mounts it needs.
func TestDeployDaemonSetPrivileges(t *testing.T) {
	docs := decodeManifests(t)
	ds := findDoc[*appsv1.DaemonSet](t, docs, "DaemonSet")
	spec := ds.Spec.Template.Spec
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		t.Errorf("host namespaces: net=%v pid=%v ipc=%v", spec.HostNetwork, spec.HostPID, spec.HostIPC)
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	wantPaths := map[string]string{"bpffs": "/sys/fs/bpf", "cgroup": "/sys/fs/cgroup", "cni-bin": "/opt/cni/bin",
		"cni-conf": "/etc/cni/net.d", "run-meshcap": "/var/run/meshcap"}
	if fmt.Sprint(hostPaths) != fmt.Sprint(wantPaths) {
		t.Errorf("hostPath volumes %v, want exactly %v", hostPaths, wantPaths)
	}
	all := append(slices.Clone(spec.InitContainers), spec.Containers...)
	for _, c := range all {
		sc := c.SecurityContext
		if sc == nil || sc.Capabilities == nil {
			t.Errorf("%s: no securityContext.capabilities", c.Name)
			continue
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("%s: privileged", c.Name)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s: allowPrivilegeEscalation not false", c.Name)
		}
		if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("%s: drop %v, want ALL", c.Name, sc.Capabilities.Drop)
		}
		for _, m := range c.VolumeMounts {
			if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional {
				t.Errorf("%s: bidirectional mount %s needs privileged", c.Name, m.Name)
			}
			if m.Name == "cgroup" && !m.ReadOnly {
				t.Errorf("%s: cgroup mounted read-write", c.Name)
			}
		}
	}
	agent := spec.Containers[0]
	if got := agent.SecurityContext.Capabilities.Add; !slices.Equal(got, []corev1.Capability{"BPF", "NET_ADMIN", "PERFMON"}) {
		t.Errorf("agent capabilities %v", got)
	}
	// `meshcap agent --uninstall`, exec'd in the agent container, must reach the pins, the records and the CNI config.
	mounted := map[string]string{}
	for _, m := range agent.VolumeMounts {
		mounted[m.Name] = m.MountPath
	}
	for vol, path := range map[string]string{"bpffs": "/sys/fs/bpf", "run-meshcap": "/var/run/meshcap",
		"cni-bin": "/host/opt/cni/bin", "cni-conf": "/host/etc/cni/net.d"} {
		if mounted[vol] != path {
			t.Errorf("agent mounts %s at %q, want %s", vol, mounted[vol], path)
		}
	}
	if !slices.Contains(agent.Args, "--pin-dir=/sys/fs/bpf/meshcap") {
		t.Errorf("agent args %q: want --pin-dir=/sys/fs/bpf/meshcap", agent.Args)
	}
	if got := spec.InitContainers[0].SecurityContext.Capabilities.Add; len(got) != 0 {
		t.Errorf("install-cni capabilities %v, want none", got)
	}
	// The CNI entry installed on the nodes is a valid meshcap-cni configuration.
	cm := findDoc[*corev1.ConfigMap](t, docs, "ConfigMap")
	entry := cm.Data["cni-entry.json"]
	if _, err := cni.ParseConf([]byte(entry)); err != nil {
		t.Errorf("ConfigMap cni-entry.json: %v", err)
	}
}

// The injection patch keeps istio-init's name and its exact istio-iptables arguments.
func TestDeployInjectionPatch(t *testing.T) {
	docs := decodeManifests(t)
	dep := findDoc[*appsv1.Deployment](t, docs, "Deployment")
	var init *corev1.Container
	for i := range dep.Spec.Template.Spec.InitContainers {
		if c := &dep.Spec.Template.Spec.InitContainers[i]; c.Name == "istio-init" {
			init = c
		}
	}
	if init == nil {
		t.Fatal("no initContainer named istio-init")
	}
	if !slices.Equal(init.Command, []string{"meshcap", "init"}) {
		t.Errorf("command %v", init.Command)
	}
	istio := []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"}
	i := slices.Index(init.Args, "-p")
	if i < 0 || !slices.Equal(init.Args[i:], istio) {
		t.Errorf("args %q: want istio-init's %q at the end", init.Args, istio)
	}
	if !slices.Contains(init.Args, "--mode=auto") {
		t.Errorf("args %q: want --mode=auto", init.Args)
	}
}

// Every `meshcap` command line in the manifests parses with the binary the tests built (flags and subcommands).
func TestDeployManifestCommandsParse(t *testing.T) {
	docs := decodeManifests(t)
	var containers []corev1.Container
	for _, d := range docs {
		switch o := d.obj.(type) {
		case *appsv1.DaemonSet:
			containers = append(containers, o.Spec.Template.Spec.InitContainers...)
			containers = append(containers, o.Spec.Template.Spec.Containers...)
		case *appsv1.Deployment:
			containers = append(containers, o.Spec.Template.Spec.InitContainers...)
		}
	}
	for _, c := range containers {
		if len(c.Command) == 0 || c.Command[0] != "meshcap" {
			continue
		}
		args := append(append(slices.Clone(c.Command[1:]), c.Args...), "--help")
		out, err := exec.Command(meshcapBin, args...).CombinedOutput()
		if err != nil {
			t.Errorf("%s: meshcap %q: %v\n%s", c.Name, args, err, out)
		}
	}
}

func TestDeployDockerfile(t *testing.T) {
	data, err := os.ReadFile("../deploy/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	if n := len(regexp.MustCompile(`(?m)^FROM `).FindAllString(s, -1)); n < 2 {
		t.Errorf("%d FROM lines: want a multi-stage build", n)
	}
	for _, want := range []string{"CGO_ENABLED=0", "./cmd/meshcap ", "./cmd/meshcap-cni", "iptables", "nftables", "COPY --from=build"} {
		if !strings.Contains(s, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}
