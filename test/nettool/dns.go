package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// DNSResult is what one DNS query saw; the tests decode it.
type DNSResult struct {
	From  string `json:"from"`  // source of the UDP answer (TCP: the connected peer)
	Local string `json:"local"` // the query's own source address
	RCode string `json:"rcode"`
	A     string `json:"a,omitempty"` // first A record
	Error string `json:"error,omitempty"`
}

// dnsCmd asks SERVER (ip:port) for the A record of NAME over UDP (from an unconnected socket, so that the answer's
// source is visible, not filtered) or TCP.
func dnsCmd(server string, args []string) error {
	fs := flag.NewFlagSet("dns", flag.ContinueOnError)
	name := fs.String("name", "svc.test.", "name to resolve")
	tcp := fs.Bool("tcp", false, "query over TCP")
	timeout := fs.Duration("timeout", 3*time.Second, "timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	res := dnsQuery(server, *name, *tcp, *timeout)
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return err
	}
	if res.Error != "" {
		return fmt.Errorf("dns %s: %s", server, res.Error)
	}
	return nil
}

func dnsQuery(server, name string, tcp bool, timeout time.Duration) DNSResult {
	var res DNSResult
	ap, err := netip.ParseAddrPort(server)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: uint16(os.Getpid()), RecursionDesired: true})
	_ = b.StartQuestions()
	n, err := dnsmessage.NewName(name)
	if err == nil {
		err = b.Question(dnsmessage.Question{Name: n, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	}
	q, err2 := b.Finish()
	if err != nil || err2 != nil {
		res.Error = fmt.Sprintf("build query: %v %v", err, err2)
		return res
	}
	var ans []byte
	if tcp {
		ans, err = dnsTCP(ap, q, timeout, &res)
	} else {
		ans, err = dnsUDP(ap, q, timeout, &res)
	}
	if err != nil {
		res.Error = err.Error()
		return res
	}
	var p dnsmessage.Parser
	h, err := p.Start(ans)
	if err != nil || h.ID != binary.BigEndian.Uint16(q) {
		res.Error = fmt.Sprintf("bad answer (id %d): %v", h.ID, err)
		return res
	}
	res.RCode = h.RCode.String()
	_ = p.SkipAllQuestions()
	if rh, err := p.AnswerHeader(); err == nil && rh.Type == dnsmessage.TypeA {
		if a, err := p.AResource(); err == nil {
			res.A = netip.AddrFrom4(a.A).String()
		}
	}
	return res
}

func dnsUDP(server netip.AddrPort, q []byte, timeout time.Duration, res *DNSResult) ([]byte, error) {
	network := "udp4"
	if server.Addr().Is6() {
		network = "udp6"
	}
	c, err := net.ListenUDP(network, nil)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.WriteToUDPAddrPort(q, server); err != nil {
		return nil, err
	}
	res.Local = c.LocalAddr().String()
	buf := make([]byte, 65535)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, err
	}
	res.From = netip.AddrPortFrom(from.Addr().Unmap(), from.Port()).String()
	return buf[:n], nil
}

func dnsTCP(server netip.AddrPort, q []byte, timeout time.Duration, res *DNSResult) ([]byte, error) {
	c, err := net.DialTimeout("tcp", server.String(), timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	res.Local, res.From = c.LocalAddr().String(), c.RemoteAddr().String()
	msg := binary.BigEndian.AppendUint16(nil, uint16(len(q)))
	if _, err := c.Write(append(msg, q...)); err != nil {
		return nil, err
	}
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		return nil, err
	}
	ans := make([]byte, binary.BigEndian.Uint16(l[:]))
	_, err = io.ReadFull(c, ans)
	return ans, err
}
