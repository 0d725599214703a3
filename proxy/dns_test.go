package proxy

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/net/dns/dnsmessage"
)

// fakeDNS is a DNS server on 127.0.0.1 (UDP and TCP, one port) answering every A query with ip. truncate sets TC on
// UDP answers; strayFirst sends a response with another ID before the real one; silent never answers.
type fakeDNS struct {
	addr                         netip.AddrPort
	ip                           [4]byte
	truncate, strayFirst, silent bool
}

// listenUDPTCP opens a UDP socket on an ephemeral port of 127.0.0.1 and a TCP listener on the same port, trying
// again when another socket already holds that port for TCP (port 0 is chosen per protocol).
func listenUDPTCP(t *testing.T) (*net.UDPConn, net.Listener) {
	t.Helper()
	for try := 0; ; try++ {
		u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp4", u.LocalAddr().String())
		if err == nil {
			return u, ln
		}
		u.Close()
		if try == 20 {
			t.Fatalf("no port free for both UDP and TCP: %v", err)
		}
	}
}

func startFakeDNS(t *testing.T, f *fakeDNS) *fakeDNS {
	t.Helper()
	u, ln := listenUDPTCP(t)
	f.addr = u.LocalAddr().(*net.UDPAddr).AddrPort()
	t.Cleanup(func() { u.Close(); ln.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := u.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if f.silent {
				continue
			}
			if f.strayFirst {
				stray := f.answer(t, buf[:n], false)
				stray[0]++
				_, _ = u.WriteToUDPAddrPort(stray, from)
			}
			_, _ = u.WriteToUDPAddrPort(f.answer(t, buf[:n], f.truncate), from)
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for {
					q, err := readTCPMessage(c)
					if err != nil {
						return
					}
					if err := writeTCPMessage(c, f.answer(t, q, false)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return f
}

func (f *fakeDNS) answer(t *testing.T, q []byte, truncated bool) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil {
		t.Errorf("fake dns: %v", err)
		return nil
	}
	question, _ := p.Question()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, Truncated: truncated})
	_ = b.StartQuestions()
	_ = b.Question(question)
	_ = b.StartAnswers()
	_ = b.AResource(dnsmessage.ResourceHeader{Name: question.Name, Class: dnsmessage.ClassINET, TTL: 5}, dnsmessage.AResource{A: f.ip})
	out, _ := b.Finish()
	return out
}

func query(t *testing.T, id uint16, name string) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	_ = b.StartQuestions()
	_ = b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	q, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return q
}

type dnsReply struct {
	id    uint16
	rcode dnsmessage.RCode
	tc    bool
	a     netip.Addr
}

func parseReply(t *testing.T, m []byte) dnsReply {
	t.Helper()
	var p dnsmessage.Parser
	h, err := p.Start(m)
	if err != nil {
		t.Fatalf("parse answer: %v", err)
	}
	r := dnsReply{id: h.ID, rcode: h.RCode, tc: h.Truncated}
	_ = p.SkipAllQuestions()
	if a, err := p.AnswerHeader(); err == nil && a.Type == dnsmessage.TypeA {
		res, _ := p.AResource()
		r.a = netip.AddrFrom4(res.A)
	}
	return r
}

func startDNS(t *testing.T, upstreams ...*fakeDNS) *DNS {
	t.Helper()
	cfg := DNSConfig{Addrs: []string{"127.0.0.1:0"}, Timeout: 300 * time.Millisecond}
	for _, u := range upstreams {
		cfg.Upstreams = append(cfg.Upstreams, u.addr)
	}
	d, err := NewDNS(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return d
}

func askUDP(t *testing.T, addr netip.AddrPort, q []byte) []byte {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(q); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("udp answer: %v", err)
	}
	return buf[:n]
}

func askTCP(t *testing.T, addr netip.AddrPort, qs ...[]byte) [][]byte {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var out [][]byte
	for _, q := range qs { // several queries on one connection, as resolvers pipeline them
		if err := writeTCPMessage(c, q); err != nil {
			t.Fatal(err)
		}
		a, err := readTCPMessage(c)
		if err != nil {
			t.Fatalf("tcp answer: %v", err)
		}
		out = append(out, a)
	}
	return out
}

func TestDNSForwardsUDPAndTCP(t *testing.T) {
	up := startFakeDNS(t, &fakeDNS{ip: [4]byte{10, 9, 8, 7}})
	d := startDNS(t, up)
	r := parseReply(t, askUDP(t, d.Addr(0), query(t, 0x1234, "svc.test.")))
	if r.id != 0x1234 || r.rcode != dnsmessage.RCodeSuccess || r.a != netip.MustParseAddr("10.9.8.7") {
		t.Fatalf("udp: %+v", r)
	}
	for i, a := range askTCP(t, d.Addr(0), query(t, 7, "a.test."), query(t, 8, "b.test.")) {
		if r := parseReply(t, a); r.id != uint16(7+i) || r.a != netip.MustParseAddr("10.9.8.7") {
			t.Fatalf("tcp answer %d: %+v", i, r)
		}
	}
}

func TestDNSNextServerOnTimeoutAndStrayAnswers(t *testing.T) {
	silent := startFakeDNS(t, &fakeDNS{silent: true})
	stray := startFakeDNS(t, &fakeDNS{ip: [4]byte{10, 0, 0, 2}, strayFirst: true})
	d := startDNS(t, silent, stray)
	r := parseReply(t, askUDP(t, d.Addr(0), query(t, 42, "svc.test.")))
	if r.id != 42 || r.a != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("want the second server's answer with ID 42, got %+v", r)
	}
}

func TestDNSTruncatedAnswerPassedUnchanged(t *testing.T) {
	up := startFakeDNS(t, &fakeDNS{ip: [4]byte{10, 0, 0, 3}, truncate: true})
	d := startDNS(t, up)
	q := query(t, 9, "big.test.")
	got := askUDP(t, d.Addr(0), q)
	if want := up.answer(t, q, true); string(got) != string(want) {
		t.Fatalf("answer altered:\n got %x\nwant %x", got, want)
	}
	if r := parseReply(t, got); !r.tc {
		t.Fatal("TC bit lost")
	}
}

func TestDNSServfailWhenNoServerAnswers(t *testing.T) {
	silent := startFakeDNS(t, &fakeDNS{silent: true})
	d := startDNS(t, silent)
	r := parseReply(t, askUDP(t, d.Addr(0), query(t, 77, "svc.test.")))
	if r.id != 77 || r.rcode != dnsmessage.RCodeServerFailure {
		t.Fatalf("udp: want SERVFAIL with ID 77, got %+v", r)
	}
	noServers := startDNS(t)
	a := askTCP(t, noServers.Addr(0), query(t, 78, "svc.test."))
	if r := parseReply(t, a[0]); r.id != 78 || r.rcode != dnsmessage.RCodeServerFailure {
		t.Fatalf("tcp without servers: %+v", r)
	}
	if got := binary.BigEndian.Uint16(servfail([]byte{1, 2, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0})); got != 0x0102 {
		t.Fatalf("servfail of an unparsable query: id %#x", got)
	}
}
