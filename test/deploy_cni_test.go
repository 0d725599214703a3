package test

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/meshcap/meshcap/loader"
	"github.com/meshcap/meshcap/pkg/cni"
)

// cniPluginBins installs bridge, host-local, loopback and cnitool once into a cache directory and returns it (or
// the prebuilt directory, see prebuiltDirEnv). Without the Go module proxy the test is skipped with the reason,
// except under CI=true where it fails.
func cniPluginBins(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv(prebuiltDirEnv); dir != "" {
		return dir // the kernel matrix's VM: installed beside the other prebuilt binaries
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := CNIPluginsDir(filepath.Join(cache, "meshcap-test"), "")
	err = InstallCNIPlugins(dir)
	switch {
	case err == nil:
		return dir
	case errors.Is(err, ErrModuleProxyUnreachable) && os.Getenv("CI") != "true":
		t.Skipf("cannot install the reference CNI plugins: %v", err)
	case errors.Is(err, ErrModuleProxyUnreachable):
		t.Fatalf("CI=true, refusing to skip: %v", err)
	}
	t.Fatal(err)
	return ""
}

// cnitoolContainerID is the container ID cnitool derives from the netns path.
func cnitoolContainerID(netns string) string {
	s := sha512.Sum512([]byte(netns))
	return fmt.Sprintf("cnitool-%x", s[:10])
}

type cniEnv struct {
	t        *testing.T
	bin      string // CNI_PATH
	confDir  string // NETCONFPATH
	net      string
	stateDir string
	ipamDir  string
	subnet   netip.Prefix
}

func newCNIEnv(t *testing.T) *cniEnv {
	t.Helper()
	cached := cniPluginBins(t)
	e := &cniEnv{t: t, bin: t.TempDir(), confDir: t.TempDir()}
	for _, n := range []string{"bridge", "host-local", "loopback", "cnitool"} {
		if err := os.Symlink(filepath.Join(cached, n), filepath.Join(e.bin, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := buildBin(filepath.Join(e.bin, "meshcap-cni"), "./cmd/meshcap-cni"); err != nil {
		t.Fatalf("build meshcap-cni: %v", err)
	}

	sfx := randHex(3)
	e.net = "mc" + sfx + "-net"
	bridge := "mcbr" + sfx
	e.subnet = netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", 200+int(randByte())%50))
	work := t.TempDir()
	e.stateDir, e.ipamDir = filepath.Join(work, "state"), filepath.Join(work, "ipam")
	conflist := map[string]any{
		"cniVersion": "1.0.0",
		"name":       e.net,
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": bridge, "isGateway": true,
				"ipam": map[string]any{"type": "host-local", "dataDir": e.ipamDir,
					"ranges": [][]map[string]string{{{"subnet": e.subnet.String()}}}},
			},
			map[string]any{
				"type": "meshcap-cni", "enroll": "annotated", "state_dir": e.stateDir,
				"exclude_namespaces": []string{"kube-system"},
				"capabilities":       map[string]bool{cni.AnnotationsCapability: true},
			},
		},
	}
	data, _ := json.MarshalIndent(conflist, "", "  ")
	if err := os.WriteFile(filepath.Join(e.confDir, "10-"+e.net+".conflist"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(bridge); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("remove bridge %s: %v", bridge, err)
			}
		}
		// libcni's result cache (cnitool has no option to move it).
		old, _ := filepath.Glob(filepath.Join("/var/lib/cni/results", e.net+"-*"))
		for _, f := range old {
			os.Remove(f)
		}
	})
	return e
}

func randByte() byte {
	n, _ := strconv.ParseUint(randHex(1), 16, 8)
	return byte(n)
}

// cnitool runs `cnitool cmd NET netns` with CNI_ARGS and (optionally) the pod annotations as CAP_ARGS.
func (e *cniEnv) cnitool(cmd, netns, cniArgs string, annotations map[string]string) (string, error) {
	c := exec.Command(filepath.Join(e.bin, "cnitool"), cmd, e.net, netns)
	c.Env = append(os.Environ(), "CNI_PATH="+e.bin, "NETCONFPATH="+e.confDir, "CNI_ARGS="+cniArgs)
	if annotations != nil {
		capArgs, _ := json.Marshal(map[string]any{cni.AnnotationsCapability: annotations})
		c.Env = append(c.Env, "CAP_ARGS="+string(capArgs))
	}
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	e.t.Logf("cnitool %s %s: err=%v stderr=%s", cmd, filepath.Base(netns), err, strings.TrimSpace(stderr.String()))
	if err != nil {
		return stdout.String(), fmt.Errorf("cnitool %s: %w: %s", cmd, err, stderr.String())
	}
	return stdout.String(), nil
}

func (e *cniEnv) record(netns string) *cni.Enrollment {
	e.t.Helper()
	rec, err := cni.Store{Dir: e.stateDir}.Get(cnitoolContainerID(netns))
	if err != nil {
		e.t.Fatal(err)
	}
	return rec
}

func (e *cniEnv) records() []string {
	e.t.Helper()
	ids, err := cni.Store{Dir: e.stateDir}.List()
	if err != nil {
		e.t.Fatal(err)
	}
	return ids
}

func podArgs(ns, name string, extra ...string) string {
	return strings.Join(append([]string{"IgnoreUnknown=1", "K8S_POD_NAMESPACE=" + ns, "K8S_POD_NAME=" + name}, extra...), ";")
}

func TestDeployCNIChainedEnrollment(t *testing.T) {
	requireRoot(t)
	e := newCNIEnv(t)
	web, sys, plain, gone := newPod(t, "web"), newPod(t, "sys"), newPod(t, "plain"), newPod(t, "gone")
	injected := map[string]string{cni.AnnotationIstioStatus: `{"initContainers":null}`, cni.AnnotationExcludeOutPrt: "5432"}

	// An injected mesh pod: enrolled with the pod's IP and netns cookie; the chain's result is bridge's.
	out, err := e.cnitool("add", web.NetnsPath, podArgs("default", "web"), injected)
	if err != nil {
		t.Fatal(err)
	}
	res, err := types100.NewResult([]byte(out))
	if err != nil {
		t.Fatalf("parse result: %v\n%s", err, out)
	}
	r := res.(*types100.Result)
	if len(r.IPs) != 1 {
		t.Fatalf("result IPs %v, want one", r.IPs)
	}
	ip, _ := netip.AddrFromSlice(r.IPs[0].Address.IP)
	ip = ip.Unmap()
	if !e.subnet.Contains(ip) {
		t.Fatalf("pod IP %v outside %v", ip, e.subnet)
	}
	rec := e.record(web.NetnsPath)
	if rec == nil {
		t.Fatalf("web pod not enrolled; records: %v", e.records())
	}
	cookie, err := loader.InboundCookie(web.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	if rec.NetnsCookie != cookie || rec.NetnsCookie == 0 {
		t.Errorf("enrolled cookie %d, pod netns cookie %d", rec.NetnsCookie, cookie)
	}
	if want := []netip.Prefix{netip.PrefixFrom(ip, 24)}; !slices.Equal(rec.IPs, want) {
		t.Errorf("enrolled IPs %v, want %v", rec.IPs, want)
	}
	if rec.Pod != (cni.Pod{Namespace: "default", Name: "web"}) || rec.Capture.OutboundPortsExclude != "5432" ||
		rec.Capture.ProxyPort != "15001" || rec.Capture.InboundPortsExclude != "15090,15021,15020" || rec.IfName != "eth0" {
		t.Errorf("record %+v", rec)
	}
	if _, err := e.cnitool("check", web.NetnsPath, podArgs("default", "web"), injected); err != nil {
		t.Errorf("CHECK enrolled pod: %v", err)
	}

	// Pods not meant for the mesh: excluded namespace (even when opting in), and no opt-in at all.
	if _, err := e.cnitool("add", sys.NetnsPath, podArgs("kube-system", "coredns", "MESHCAP_ENROLL=true"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cnitool("add", plain.NetnsPath, podArgs("default", "plain"), map[string]string{}); err != nil {
		t.Fatal(err)
	}
	if got := e.records(); !slices.Equal(got, []string{cnitoolContainerID(web.NetnsPath)}) {
		t.Fatalf("records %v, want only the web pod", got)
	}
	for _, p := range []struct{ netns, args string }{{sys.NetnsPath, podArgs("kube-system", "coredns", "MESHCAP_ENROLL=true")}, {plain.NetnsPath, podArgs("default", "plain")}} {
		if _, err := e.cnitool("check", p.netns, p.args, map[string]string{}); err != nil {
			t.Errorf("CHECK non-mesh pod: %v", err)
		}
	}
	// CHECK notices a pod that should be enrolled but is not.
	if _, err := e.cnitool("check", plain.NetnsPath, podArgs("default", "plain", "MESHCAP_ENROLL=true"), nil); err == nil || !strings.Contains(err.Error(), "no record") {
		t.Errorf("CHECK of an unrecorded pod that should be enrolled: %v", err)
	}

	// DEL unenrolls; a second DEL is fine.
	for i := 0; i < 2; i++ {
		if _, err := e.cnitool("del", web.NetnsPath, podArgs("default", "web"), injected); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if rec := e.record(web.NetnsPath); rec != nil {
		t.Fatalf("DEL left the record: %+v", rec)
	}

	// A pod whose netns vanished, deleted the way a runtime does it after a crash: CNI_NETNS empty.
	if _, err := e.cnitool("add", gone.NetnsPath, podArgs("default", "gone", "MESHCAP_ENROLL=true"), nil); err != nil {
		t.Fatal(err)
	}
	goneID := cnitoolContainerID(gone.NetnsPath)
	if rec := e.record(gone.NetnsPath); rec == nil {
		t.Fatal("opted-in pod not enrolled")
	}
	if err := gone.Close(); err != nil {
		t.Fatal(err)
	}
	lib := libcni.NewCNIConfig([]string{e.bin}, nil)
	conf, err := libcni.LoadNetworkConf(e.confDir, e.net)
	if err != nil {
		t.Fatal(err)
	}
	if err := lib.DelNetworkList(context.Background(), conf, &libcni.RuntimeConf{ContainerID: goneID, NetNS: "", IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "gone"}}}); err != nil {
		t.Fatalf("DEL with empty CNI_NETNS: %v", err)
	}
	if rec := e.record(gone.NetnsPath); rec != nil {
		t.Fatalf("DEL with empty netns left the record: %+v", rec)
	}
	// And with the vanished path itself (cnitool passes it through).
	if _, err := e.cnitool("del", gone.NetnsPath, podArgs("default", "gone"), nil); err != nil {
		t.Errorf("DEL with a vanished netns path: %v", err)
	}

	for _, p := range []struct{ netns, args string }{{sys.NetnsPath, podArgs("kube-system", "coredns")}, {plain.NetnsPath, podArgs("default", "plain")}} {
		if _, err := e.cnitool("del", p.netns, p.args, nil); err != nil {
			t.Errorf("DEL non-mesh pod: %v", err)
		}
	}
	if got := e.records(); len(got) != 0 {
		t.Errorf("records left: %v", got)
	}
	// host-local released every address (only its lock/last-reserved files remain).
	if ents, _ := os.ReadDir(filepath.Join(e.ipamDir, e.net)); len(ents) > 0 {
		var left []string
		for _, de := range ents {
			if name := de.Name(); name != "lock" && !strings.HasPrefix(name, "last_reserved_ip") {
				left = append(left, name)
			}
		}
		if len(left) > 0 {
			t.Errorf("host-local still holds %v", left)
		}
	}
}
