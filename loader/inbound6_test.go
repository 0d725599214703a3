package loader

import (
	"context"
	"net"
	"os/exec"
	"testing"

	"github.com/meshcap/meshcap/pkg/podnet"
)

const (
	inbClient6 = "fd00:198:19::1"
	inbServer6 = "fd00:198:19::2"
)

// listenFamily listens in pod on addr with network tcp4 or tcp6 (tcp6 on [::] is IPv6-only) and answers like
// inbEnv.serve.
func (e *inbEnv) listenFamily(t *testing.T, pod *podnet.Pod, network, addr, tag string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	err := pod.Do(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(context.Background(), network, addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return inbAnswer(t, ln, tag)
}

// TestInboundIPv6: with IPv6 enabled in the policy, sk_lookup steers IPv6 connections to the sidecar's IPv6
// listener and IPv4 ones to its IPv4 listener (one sockmap slot per family); an IPv6-only listener never gets
// IPv4 (refused, fail closed); ::1 and the passthrough source ::6 (put on lo by the attach) are never steered;
// without IPv6 in the policy IPv6 goes to the app, as istio without ip6tables rules.
func TestInboundIPv6(t *testing.T) {
	e := newInbEnv(t)
	for _, a := range []struct {
		pod  *podnet.Pod
		addr string
	}{{e.client, inbClient6}, {e.server, inbServer6}} {
		if out, err := exec.Command("ip", "-n", a.pod.Name, "addr", "add", a.addr+"/64", "dev", a.pod.Veth, "nodad").CombinedOutput(); err != nil {
			t.Fatalf("add %s in %s: %v %s", a.addr, a.pod.Name, err, out)
		}
	}
	e.serve(t, e.server, "[::]:8080", "app") // dual-stack app
	proxy6 := e.listenFamily(t, e.server, "tcp6", "[::]:15006", "proxy6")
	v6, v4 := net.JoinHostPort(inbServer6, "8080"), srv("8080")

	p := inbPolicy(t, "*", "")
	p.IPv6 = true
	if _, err := AttachInbound(e.server.NetnsPath, p, InboundOptions{PinRoot: e.pinRoot, Listener: proxy6}); err != nil {
		t.Fatal(err)
	}
	if st := e.status(t); !st.IPv6 || !st.Listener || !st.Listener6 {
		t.Fatalf("status after attach with an IPv6 listener: %+v", st)
	}
	e.expect(t, e.client, "", v6, "proxy6 "+v6)
	before := e.status(t).Stats.DropAssign
	e.expectRefused(t, e.client, v4) // only an IPv6-only listener: IPv4 is refused, never sent to the app
	if st := e.status(t); st.Stats.DropAssign <= before {
		t.Errorf("IPv4 to an IPv6-only listener: DropAssign %d, want it counted", st.Stats.DropAssign)
	}

	proxy4 := e.listenFamily(t, e.server, "tcp4", "0.0.0.0:15006", "proxy4")
	if err := RegisterInboundListener(e.pinRoot, proxy4); err != nil {
		t.Fatal(err)
	}
	e.expect(t, e.client, "", v4, "proxy4 "+v4)
	e.expect(t, e.client, "", v6, "proxy6 "+v6)
	e.expect(t, e.server, "::6", v6, "app "+v6) // the sidecar's passthrough source
	e.expect(t, e.server, "", net.JoinHostPort("::1", "8080"), "app [::1]:8080")
	e.expect(t, e.server, "", v6, "app "+v6) // the pod calling its own address

	p.IPv6 = false
	if _, err := AttachInbound(e.server.NetnsPath, p, InboundOptions{PinRoot: e.pinRoot}); err != nil {
		t.Fatal(err)
	}
	e.expect(t, e.client, "", v6, "app "+v6) // istio writes no ip6tables rules: IPv6 reaches the app
	e.expect(t, e.client, "", v4, "proxy4 "+v4)
}
