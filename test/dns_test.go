package test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// dnsServer is a real DNS server (UDP and TCP on one address) in a pod: it answers every A query with answer (or,
// when answer is the zero Addr, with 10.53.<source port>: portInAnswer) and records where each query came from, by
// name.
type dnsServer struct {
	answer netip.Addr
	mu     sync.Mutex
	seen   map[string]string // query name -> source address
}

func startDNSServer(t *testing.T, pod *podnet.Pod, addr string, answer netip.Addr) *dnsServer {
	t.Helper()
	s := &dnsServer{answer: answer, seen: map[string]string{}}
	var u net.PacketConn
	if err := pod.Do(func() (err error) { u, err = net.ListenPacket("udp", addr); return err }); err != nil {
		t.Fatalf("dns server udp %s: %v", addr, err)
	}
	ln, err := pod.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { u.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := u.ReadFrom(buf)
			if err != nil {
				return
			}
			if a := s.reply(buf[:n], from.String()); a != nil {
				_, _ = u.WriteTo(a, from)
			}
		}
	}()
	serveConns(t, ln, func(c net.Conn) {
		var l [2]byte
		for {
			if _, err := io.ReadFull(c, l[:]); err != nil {
				return
			}
			q := make([]byte, binary.BigEndian.Uint16(l[:]))
			if _, err := io.ReadFull(c, q); err != nil {
				return
			}
			a := s.reply(q, c.RemoteAddr().String())
			if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(a))), a...)); err != nil {
				return
			}
		}
	})
	return s
}

func (s *dnsServer) reply(q []byte, from string) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil {
		return nil
	}
	question, err := p.Question()
	if err != nil {
		return nil
	}
	s.mu.Lock()
	s.seen[question.Name.String()] = from
	s.mu.Unlock()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired})
	_ = b.StartQuestions()
	_ = b.Question(question)
	_ = b.StartAnswers()
	a4 := s.answer
	if !a4.IsValid() {
		a4 = portInAnswer(from)
	}
	_ = b.AResource(dnsmessage.ResourceHeader{Name: question.Name, Class: dnsmessage.ClassINET, TTL: 5}, dnsmessage.AResource{A: a4.As4()})
	a, _ := b.Finish()
	return a
}

func (s *dnsServer) source(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[name]
}

// DNSResult mirrors nettool's dns output.
type DNSResult struct {
	From, Local, Peer, RCode, A, Error string
}

func dnsQuery(t *testing.T, pod *podnet.Pod, cred *podnet.Cred, server, name string, tcp bool) (DNSResult, error) {
	t.Helper()
	how := "udp"
	if tcp {
		how = "tcp"
	}
	return dnsAsk(t, pod, cred, server, name, how)
}

// dnsAsk queries server from pod as cred: how is "udp" (unconnected socket), "connected" (connected UDP socket) or
// "tcp".
func dnsAsk(t *testing.T, pod *podnet.Pod, cred *podnet.Cred, server, name, how string) (DNSResult, error) {
	t.Helper()
	args := []string{"dns", server, "-name", name, "-timeout", "2s"}
	if how != "udp" {
		args = append(args, "-"+how)
	}
	var res DNSResult
	err := runNettool(t, pod, cred, &res, args...)
	return res, err
}

// inPrivateResolvConf wraps argv so that it runs with resolvConf bind-mounted on /etc/resolv.conf in a private
// mount namespace (what the pod's own resolv.conf is to istio-iptables).
func inPrivateResolvConf(resolvConf string, argv ...string) (string, []string) {
	return "unshare", append([]string{"-m", "--propagation", "private", "sh", "-c",
		`mount --bind "$0" /etc/resolv.conf && exec "$@"`, resolvConf}, argv...)
}

// runMeshcapResolv is runMeshcap with resolvConf as meshcap's /etc/resolv.conf and env added to its environment.
func runMeshcapResolv(t *testing.T, resolvConf string, env []string, args ...string) (string, error) {
	t.Helper()
	bin, argv := inPrivateResolvConf(resolvConf, append([]string{meshcapBin}, args...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, argv...)
	cmd.Env = append(cmd.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("meshcap %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// TestDNSRedirectIptablesThroughProxy: iptables mode with --redirect-dns (istio's DNS rules, servers from the
// pod's resolv.conf, IPv4 and IPv6 with --dual-stack) and meshcap proxy's own DNS ports, against a real DNS server
// in another pod. UDP and TCP queries to either server are answered through 15053 ([::1]:15053 for IPv6) and the
// app sees the answer come from the server it asked; with the proxy stopped there is no answer; uid 1337 goes
// direct.
func TestDNSRedirectIptablesThroughProxy(t *testing.T) {
	requireRoot(t)
	topo := newDualStackTopology(t)
	answer := netip.MustParseAddr("10.53.0.7")
	servers := []string{"198.18.0.2:53", dst(server6, 53)}
	var srvs []*dnsServer
	for _, a := range servers {
		srvs = append(srvs, startDNSServer(t, topo.server, a, answer))
	}
	seen := func(name string) string {
		for _, s := range srvs {
			if from := s.source(name); from != "" {
				return from
			}
		}
		return ""
	}
	resolv := filepath.Join(worldDir(t), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 198.18.0.2\nnameserver fd00:198:18::2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin, argv := inPrivateResolvConf(resolv, meshcapBin, "iptables", "-i", "*", "--redirect-dns", "--dual-stack")
	if out, err := runIn(t, topo.client, nil, bin, argv...); err != nil {
		t.Fatalf("iptables --redirect-dns: %v %s", err, out)
	}
	px := startProxy(t, topo.client, "--no-inbound", "--resolv-conf", resolv)

	for _, server := range servers {
		for _, tcp := range []bool{false, true} {
			name := fmt.Sprintf("tcp-%v.%s.proxied.test.", tcp, strings.NewReplacer(":", "-", ".", "-", "[", "", "]", "").Replace(server))
			res, err := dnsQuery(t, topo.client, user, server, name, tcp)
			if err != nil || res.A != answer.String() || res.RCode != "RCodeSuccess" {
				t.Fatalf("query %s (tcp=%v) through the proxy: %+v, %v\nproxy:\n%s", server, tcp, res, err, px.stderr.String())
			}
			if res.From != server {
				t.Errorf("%s (tcp=%v): answer from %s, want the server asked", server, tcp, res.From)
			}
			if from := seen(name); from == "" || from == res.Local {
				t.Errorf("%s (tcp=%v): a server saw the query from %q, the client sent it from %s: not relayed by the proxy", server, tcp, from, res.Local)
			}
		}
	}
	// The proxy's own DNS ports, IPv4 and IPv6.
	for _, addr := range []string{"127.0.0.1:15053", "[::1]:15053"} {
		for _, tcp := range []bool{false, true} {
			if res, err := dnsQuery(t, topo.client, user, addr, "own.port.test.", tcp); err != nil || res.A != answer.String() {
				t.Errorf("query %s (tcp=%v): %+v, %v", addr, tcp, res, err)
			}
		}
	}
	px.stop()
	for i, server := range servers {
		for _, tcp := range []bool{false, true} {
			if res, err := dnsQuery(t, topo.client, user, server, "stopped.test.", tcp); err == nil || res.A != "" {
				t.Errorf("query %s (tcp=%v) with the proxy stopped: %+v; want no answer", server, tcp, res)
			}
			name := fmt.Sprintf("direct-%v-%d.test.", tcp, i)
			res, err := dnsQuery(t, topo.client, uid1337, server, name, tcp)
			if err != nil || res.A != answer.String() || res.From != server {
				t.Errorf("query %s (tcp=%v) as uid 1337: %+v, %v; want a direct answer", server, tcp, res, err)
			}
			if from := srvs[i].source(name); !strings.HasSuffix(from, portOf(res.Local)) {
				t.Errorf("%s as uid 1337 (tcp=%v): server saw %q, client sent from %s: not direct", server, tcp, from, res.Local)
			}
		}
	}
}

func portOf(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		return addr[i:]
	}
	return addr
}

// portInAnswer is the answer of a server started without one: 10.53.<the query's source port, big endian>.
func portInAnswer(from string) netip.Addr {
	ap, err := netip.ParseAddrPort(from)
	if err != nil {
		return netip.IPv4Unspecified()
	}
	p := ap.Port()
	return netip.AddrFrom4([4]byte{10, 53, byte(p >> 8), byte(p)})
}
