package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/meshcap/meshcap/pkg/capture"
)

const prevResult = `{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:ff"},{"name":"eth0","mac":"aa:bb:cc:dd:ee:01","sandbox":"/var/run/netns/x"}],"ips":[{"interface":1,"address":"198.18.7.5/24","gateway":"198.18.7.1"}],"routes":[{"dst":"0.0.0.0/0"}]}`

func confJSON(t *testing.T, extra string) []byte {
	t.Helper()
	s := `{"cniVersion":"1.0.0","name":"meshnet","type":"meshcap-cni","state_dir":"` + t.TempDir() + `"` + extra + `,"prevResult":` + prevResult + `}`
	return []byte(s)
}

func TestParseConfDefaultsAndStrictness(t *testing.T) {
	conf, err := ParseConf([]byte(`{"cniVersion":"1.0.0","name":"n","type":"meshcap-cni"}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.StateDir != DefaultStateDir || conf.Enroll != EnrollAnnotated || !slices.Equal(conf.ExcludeNamespaces, []string{"kube-system"}) {
		t.Fatalf("defaults: %+v", conf)
	}
	conf, err = ParseConf([]byte(`{"cniVersion":"1.0.0","name":"n","type":"meshcap-cni","exclude_namespaces":[]}`))
	if err != nil || len(conf.ExcludeNamespaces) != 0 {
		t.Fatalf("explicit empty exclude list: %+v %v", conf, err)
	}
	for _, tc := range []struct{ conf, want string }{
		{`{"cniVersion":"1.0.0","type":"meshcap-cni","exclude_namespace":["a"]}`, `"exclude_namespace"`},
		{`{"cniVersion":"1.0.0","type":"meshcap-cni","enroll":"some"}`, `"some"`},
		{`{"cniVersion":"1.0.0","type":"meshcap-cni","state_dir":"rel/dir"}`, `"rel/dir"`},
		{`{"cniVersion":"1.0.0","type":"meshcap-cni","capture":{"envoy-prot":"1"}}`, `"envoy-prot"`},
	} {
		if _, err := ParseConf([]byte(tc.conf)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseConf(%s) = %v, want an error naming %s", tc.conf, err, tc.want)
		}
	}
}

func TestParseArgs(t *testing.T) {
	got, err := ParseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;MESHCAP_ENROLL=true")
	if err != nil {
		t.Fatal(err)
	}
	if PodFromArgs(got) != (Pod{Namespace: "default", Name: "web-1"}) || got[ArgEnroll] != "true" {
		t.Fatalf("got %v", got)
	}
	if _, err := ParseArgs("A=1;broken"); err == nil || !strings.Contains(err.Error(), `"broken"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestDecide(t *testing.T) {
	annotated := &NetConf{Enroll: EnrollAnnotated, ExcludeNamespaces: []string{"kube-system"}}
	all := &NetConf{Enroll: EnrollAll, ExcludeNamespaces: []string{"kube-system"}}
	web := Pod{Namespace: "default", Name: "web"}
	sys := Pod{Namespace: "kube-system", Name: "coredns"}
	for _, tc := range []struct {
		name  string
		conf  *NetConf
		pod   Pod
		args  map[string]string
		annot map[string]string
		want  bool
	}{
		{"annotated default", annotated, web, nil, nil, false},
		{"all default", all, web, nil, nil, true},
		{"excluded ns wins over opt-in", all, sys, map[string]string{ArgEnroll: "true"}, map[string]string{AnnotationEnroll: "true"}, false},
		{"arg opt-in", annotated, web, map[string]string{ArgEnroll: "true"}, nil, true},
		{"arg opt-out", all, web, map[string]string{ArgEnroll: "false"}, nil, false},
		{"annotation opt-in", annotated, web, nil, map[string]string{AnnotationEnroll: "true"}, true},
		{"annotation opt-out", all, web, nil, map[string]string{AnnotationEnroll: "false"}, false},
		{"istio inject false", all, web, nil, map[string]string{AnnotationIstioInject: "false"}, false},
		{"istio injected", annotated, web, nil, map[string]string{AnnotationIstioStatus: "{}"}, true},
		{"no pod info, all", all, Pod{}, nil, nil, true},
	} {
		d, err := Decide(tc.conf, tc.pod, tc.args, tc.annot)
		if err != nil || d.Enroll != tc.want || d.Reason == "" {
			t.Errorf("%s: %+v, %v; want enroll=%v", tc.name, d, err, tc.want)
		}
	}
	if _, err := Decide(all, web, map[string]string{ArgEnroll: "maybe"}, nil); err == nil || !strings.Contains(err.Error(), `"maybe"`) {
		t.Errorf("bad MESHCAP_ENROLL: %v", err)
	}
}

func TestCaptureFor(t *testing.T) {
	conf, err := ParseConf([]byte(`{"cniVersion":"1.0.0","type":"meshcap-cni","capture":{"istio-local-outbound-ports-exclude":"9000"}}`))
	if err != nil {
		t.Fatal(err)
	}
	cfg, pol, err := CaptureFor(conf, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := InjectorDefaults()
	want.OutboundPortsExclude = "9000"
	if cfg != want {
		t.Fatalf("config:\n got %+v\nwant %+v", cfg, want)
	}
	if pol.ProxyPort != 15001 || pol.InboundCapturePort != 15006 || !pol.InboundAll || !pol.OutboundAll || !slices.Equal(pol.ProxyUIDs, []uint32{1337}) {
		t.Fatalf("policy %+v", pol)
	}
	cfg, _, err = CaptureFor(conf,
		map[string]string{"MESHCAP_ENVOY_PORT": "16001"},
		map[string]string{AnnotationExcludeInPort: "8080,15020", AnnotationIncludeCIDRs: "10.0.0.0/8", AnnotationExcludeOutPrt: "5432"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ProxyPort != "16001" || cfg.InboundPortsExclude != "15090,15021,15020,8080" || cfg.OutboundIPRangesInclude != "10.0.0.0/8" || cfg.OutboundPortsExclude != "5432" {
		t.Fatalf("overrides: %+v", cfg)
	}
	if _, _, err := CaptureFor(conf, map[string]string{"MESHCAP_PROXY_UID": "istio"}, nil); err == nil || !strings.Contains(err.Error(), `"istio"`) {
		t.Fatalf("bad uid: %v", err)
	}
	if _, _, err := CaptureFor(conf, nil, map[string]string{AnnotationInterception: "NONE"}); err == nil || !strings.Contains(err.Error(), `"NONE"`) {
		t.Fatalf("bad mode: %v", err)
	}
}

func TestStoreRejectsUnsafeIDs(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	for _, id := range []string{"", "../etc/passwd", "a/b", ".hidden"} {
		if err := s.Put(&Enrollment{ContainerID: id}); err == nil {
			t.Errorf("Put(%q) accepted", id)
		}
	}
}

type fakeEnroller struct{ enrolled map[uint64]capture.Policy }

func (f *fakeEnroller) Enroll(e *Enrollment, p capture.Policy) error {
	f.enrolled[e.NetnsCookie] = p
	return nil
}
func (f *fakeEnroller) Unenroll(e *Enrollment) error { delete(f.enrolled, e.NetnsCookie); return nil }

func testPlugin(out *bytes.Buffer, enr *fakeEnroller) *Plugin {
	return &Plugin{
		NewEnroller: func(*NetConf) (Enroller, error) { return enr, nil },
		ReadNetnsID: func(path string) (NetnsID, error) {
			if path != "/var/run/netns/x" {
				return NetnsID{}, fmt.Errorf("open netns %q: %w", path, ErrNetnsGone)
			}
			return NetnsID{Cookie: 4242, Inode: 99}, nil
		},
		HostFacts: func(string, capture.Config) (capture.HostFacts, error) { return capture.HostFacts{}, nil },
		Stdout:    out,
		Now:       func() time.Time { return time.Unix(1, 0) },
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("%v: %s", err, a)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return reflect.DeepEqual(x, y)
}

func TestPluginAddDelCheck(t *testing.T) {
	var out bytes.Buffer
	enr := &fakeEnroller{enrolled: map[uint64]capture.Policy{}}
	p := testPlugin(&out, enr)
	conf := confJSON(t, `,"enroll":"all"`)
	var parsed NetConf
	_ = json.Unmarshal(conf, &parsed)
	args := &skel.CmdArgs{ContainerID: "c1", Netns: "/var/run/netns/x", IfName: "eth0", Args: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web", StdinData: conf}

	if err := p.Add(args); err != nil {
		t.Fatal(err)
	}
	if !jsonEqual(t, out.Bytes(), []byte(prevResult)) {
		t.Fatalf("ADD output is not prevResult:\n%s", out.String())
	}
	rec, err := Store{Dir: parsed.StateDir}.Get("c1")
	if err != nil || rec == nil {
		t.Fatalf("no record: %v", err)
	}
	if rec.NetnsCookie != 4242 || !slices.Equal(rec.IPs, []netip.Prefix{netip.MustParsePrefix("198.18.7.5/24")}) || rec.Pod.Name != "web" {
		t.Fatalf("record %+v", rec)
	}
	if _, ok := enr.enrolled[4242]; !ok {
		t.Fatal("enroller not called")
	}
	if err := p.Check(args); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	// DEL with an empty netns, twice.
	del := *args
	del.Netns = ""
	for i := 0; i < 2; i++ {
		if err := p.Del(&del); err != nil {
			t.Fatalf("DEL #%d: %v", i, err)
		}
	}
	if rec, _ := (Store{Dir: parsed.StateDir}).Get("c1"); rec != nil || len(enr.enrolled) != 0 {
		t.Fatalf("DEL left %+v / %v", rec, enr.enrolled)
	}
	if err := p.Check(args); err == nil || !strings.Contains(err.Error(), "no record") {
		t.Fatalf("CHECK after DEL: %v", err)
	}
}

func TestPluginLeavesNonMeshPodAlone(t *testing.T) {
	var out bytes.Buffer
	enr := &fakeEnroller{enrolled: map[uint64]capture.Policy{}}
	p := testPlugin(&out, enr)
	conf := confJSON(t, `,"enroll":"all"`)
	var parsed NetConf
	_ = json.Unmarshal(conf, &parsed)
	args := &skel.CmdArgs{ContainerID: "c2", Netns: "/var/run/netns/x", IfName: "eth0", Args: "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns", StdinData: conf}
	if err := p.Add(args); err != nil {
		t.Fatal(err)
	}
	if !jsonEqual(t, out.Bytes(), []byte(prevResult)) {
		t.Fatalf("output %s", out.String())
	}
	if ents, _ := os.ReadDir(parsed.StateDir); len(ents) != 0 || len(enr.enrolled) != 0 {
		t.Fatalf("non-mesh pod recorded: %v %v", ents, enr.enrolled)
	}
	if err := p.Check(args); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := p.Del(args); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

// TestPluginEnrollsIPv6Pod: a pod whose netns facts enable IPv6 (istio would write ip6tables rules) is enrolled
// into eBPF capture with IPv6 capture on, and its facts are recorded so that the agent's re-enrollment builds the
// same policy; without IPv6 the policy has it off.
func TestPluginEnrollsIPv6Pod(t *testing.T) {
	for _, ipv6 := range []bool{true, false} {
		var out, log bytes.Buffer
		enr := &fakeEnroller{enrolled: map[uint64]capture.Policy{}}
		p := testPlugin(&out, enr)
		p.Log, p.Fallback = &log, &fakeEnroller{enrolled: map[uint64]capture.Policy{}}
		p.HostFacts = func(netns string, c capture.Config) (capture.HostFacts, error) {
			if netns != "/var/run/netns/x" {
				t.Errorf("facts read in %q", netns)
			}
			return capture.HostFacts{IPv6: ipv6}, nil
		}
		conf := confJSON(t, `,"enroll":"all"`)
		var parsed NetConf
		_ = json.Unmarshal(conf, &parsed)
		args := &skel.CmdArgs{ContainerID: "c6", Netns: "/var/run/netns/x", IfName: "eth0",
			Args: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web", StdinData: conf}
		if err := p.Add(args); err != nil {
			t.Fatalf("ADD: %v", err)
		}
		pol, ok := enr.enrolled[4242]
		if !ok || pol.IPv6 != ipv6 || strings.Contains(log.String(), "NOT enrolled") {
			t.Fatalf("ipv6=%v: eBPF enrolled %v (policy IPv6 %v), log %q", ipv6, ok, pol.IPv6, log.String())
		}
		rec, err := Store{Dir: parsed.StateDir}.Get("c6")
		if err != nil || rec == nil || rec.Mode != ModeEBPF || rec.Facts.IPv6 != ipv6 {
			t.Fatalf("record %+v, %v: want mode eBPF with facts IPv6=%v", rec, err, ipv6)
		}
		if rp, err := rec.Policy(); err != nil || rp.IPv6 != ipv6 {
			t.Fatalf("recorded policy IPv6 %v, %v: want %v", rp.IPv6, err, ipv6)
		}
		if err := p.Del(args); err != nil {
			t.Fatalf("DEL: %v", err)
		}
	}
}

// TestPluginFallsBackForPodEBPFCannotCover: a pod with TPROXY interception is not enrolled into eBPF capture: it
// is captured by the iptables fallback instead, recorded as such (DEL undoes it there), and the reason is logged.
func TestPluginFallsBackForPodEBPFCannotCover(t *testing.T) {
	for _, tc := range []struct {
		name, args string
		ipv6       bool
		want       string
	}{
		{"tproxy", ";MESHCAP_ISTIO_INBOUND_INTERCEPTION_MODE=TPROXY", false, "-m TPROXY"},
		{"tproxy-ipv6", ";MESHCAP_ISTIO_INBOUND_INTERCEPTION_MODE=TPROXY", true, "-m TPROXY"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, log bytes.Buffer
			enr := &fakeEnroller{enrolled: map[uint64]capture.Policy{}}
			fallback := &fakeEnroller{enrolled: map[uint64]capture.Policy{}}
			p := testPlugin(&out, enr)
			p.Log, p.Fallback = &log, fallback
			p.HostFacts = func(netns string, c capture.Config) (capture.HostFacts, error) {
				if netns != "/var/run/netns/x" {
					t.Errorf("facts read in %q", netns)
				}
				return capture.HostFacts{IPv6: tc.ipv6}, nil
			}
			conf := confJSON(t, `,"enroll":"all"`)
			var parsed NetConf
			_ = json.Unmarshal(conf, &parsed)
			args := &skel.CmdArgs{ContainerID: "c9", Netns: "/var/run/netns/x", IfName: "eth0",
				Args: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web" + tc.args, StdinData: conf}
			if err := p.Add(args); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if !strings.Contains(log.String(), tc.want) || !strings.Contains(log.String(), "NOT enrolled into eBPF") {
				t.Errorf("fallback not logged with its reason: %q", log.String())
			}
			rec, err := Store{Dir: parsed.StateDir}.Get("c9")
			if err != nil || rec == nil || rec.Mode != ModeIPTables {
				t.Fatalf("record %+v, %v: want mode %q", rec, err, ModeIPTables)
			}
			if len(enr.enrolled) != 0 || len(fallback.enrolled) != 1 {
				t.Fatalf("eBPF enrolled %v, fallback %v: want the fallback only", enr.enrolled, fallback.enrolled)
			}
			if err := p.Del(args); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if len(fallback.enrolled) != 0 {
				t.Fatalf("DEL left the fallback in place: %v", fallback.enrolled)
			}
		})
	}
}

func TestPluginErrors(t *testing.T) {
	var out bytes.Buffer
	p := testPlugin(&out, &fakeEnroller{enrolled: map[uint64]capture.Policy{}})
	noPrev := []byte(`{"cniVersion":"1.0.0","name":"n","type":"meshcap-cni","enroll":"all","state_dir":"` + t.TempDir() + `"}`)
	err := p.Add(&skel.CmdArgs{ContainerID: "c3", Netns: "/var/run/netns/x", StdinData: noPrev})
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, "prevResult") {
		t.Fatalf("ADD without prevResult: %v", err)
	}
	err = p.Add(&skel.CmdArgs{ContainerID: "c3", Netns: "/var/run/netns/gone", StdinData: confJSON(t, `,"enroll":"all"`)})
	if !errors.As(err, &te) || te.Code != types.ErrInvalidNetNS {
		t.Fatalf("ADD with a vanished netns: %v", err)
	}
	err = p.Add(&skel.CmdArgs{ContainerID: "c3", Netns: "/var/run/netns/x", Args: "MESHCAP_ENROLL=true;MESHCAP_ENVOY_PORT=0", StdinData: confJSON(t, "")})
	if err == nil || !strings.Contains(err.Error(), `"0"`) {
		t.Fatalf("ADD with a bad port: %v", err)
	}
	dir := t.TempDir()
	err = p.Del(&skel.CmdArgs{ContainerID: "x/../../y", StdinData: []byte(`{"cniVersion":"1.0.0","name":"n","type":"meshcap-cni","state_dir":"` + dir + `"}`)})
	if err == nil {
		t.Fatal("DEL accepted an unsafe container ID")
	}
}

func TestPluginGC(t *testing.T) {
	var out bytes.Buffer
	enr := &fakeEnroller{enrolled: map[uint64]capture.Policy{}}
	p := testPlugin(&out, enr)
	conf := confJSON(t, `,"enroll":"all"`)
	var parsed NetConf
	_ = json.Unmarshal(conf, &parsed)
	for _, id := range []string{"keep", "stale"} {
		if err := p.Add(&skel.CmdArgs{ContainerID: id, Netns: "/var/run/netns/x", IfName: "eth0", StdinData: conf}); err != nil {
			t.Fatal(err)
		}
	}
	gc := []byte(`{"cniVersion":"1.1.0","name":"meshnet","type":"meshcap-cni","state_dir":"` + parsed.StateDir + `","cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]}`)
	if err := p.GC(&skel.CmdArgs{StdinData: gc}); err != nil {
		t.Fatal(err)
	}
	ids, _ := Store{Dir: parsed.StateDir}.List()
	if !slices.Equal(ids, []string{"keep"}) {
		t.Fatalf("after GC: %v", ids)
	}
}

func TestStoreLockExcludes(t *testing.T) {
	s := Store{Dir: filepath.Join(t.TempDir(), "state")}
	unlock, err := s.Lock()
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{})
	go func() {
		u2, err := s.Lock()
		if err != nil {
			t.Error(err)
		} else {
			u2()
		}
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("second Lock did not wait for the first")
	case <-time.After(100 * time.Millisecond):
	}
	unlock()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("second Lock not granted after release")
	}
	if ids, err := s.List(); err != nil || len(ids) != 0 {
		t.Fatalf("Lock left records %v (%v)", ids, err)
	}
}

// TestNetnsIDSame: cookies compare as cookies; a stand-in (a process that reads no netns cookie) against a recorded
// cookie proves only a different netns (by inode), never the same one.
func TestNetnsIDSame(t *testing.T) {
	const standIn = 1<<63 | 77
	for _, c := range []struct {
		id                  NetnsID
		cookie, inode       uint64
		wantSame, wantKnown bool
	}{
		{NetnsID{Cookie: 5, Inode: 77}, 5, 77, true, true},
		{NetnsID{Cookie: 6, Inode: 77}, 5, 77, false, true},
		{NetnsID{Cookie: standIn, Inode: 77}, standIn, 77, true, true},
		{NetnsID{Cookie: standIn, Inode: 77}, 5, 77, false, false},
		{NetnsID{Cookie: standIn, Inode: 77}, 5, 0, false, false},
		{NetnsID{Cookie: standIn, Inode: 77}, 5, 78, false, true},
		{NetnsID{Cookie: 5, Inode: 77}, standIn, 77, false, false},
	} {
		if same, known := c.id.Same(c.cookie, c.inode); same != c.wantSame || known != c.wantKnown {
			t.Errorf("%+v.Same(%#x, %d) = %v, %v; want %v, %v", c.id, c.cookie, c.inode, same, known, c.wantSame, c.wantKnown)
		}
	}
}
