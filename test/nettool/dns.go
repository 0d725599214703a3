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
	"golang.org/x/sys/unix"
)

// DNSResult is what one DNS query saw; the tests decode it.
type DNSResult struct {
	From  string `json:"from"`           // source of the UDP answer (TCP: the connected peer)
	Local string `json:"local"`          // the query's own source address
	Peer  string `json:"peer,omitempty"` // -connected: the UDP socket's peer (getpeername)
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
	connected := fs.Bool("connected", false, "UDP from a connected socket (as glibc), still reading the answer's source")
	timeout := fs.Duration("timeout", 3*time.Second, "timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	res := dnsQuery(server, *name, *tcp, *connected, *timeout)
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return err
	}
	if res.Error != "" {
		return fmt.Errorf("dns %s: %s", server, res.Error)
	}
	return nil
}

func dnsQuery(server, name string, tcp, connected bool, timeout time.Duration) DNSResult {
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
	switch {
	case ap.Addr().Is4In6() && !tcp:
		ans, err = dnsMappedUDP(ap, q, timeout, connected, &res)
	case tcp:
		ans, err = dnsTCP(ap, q, timeout, &res)
	default:
		ans, err = dnsUDP(ap, q, timeout, connected, &res)
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

// dnsUDP queries from an unconnected UDP socket, or a connected one (glibc's resolver connects), and reads the
// answer with its source address (recvfrom), as glibc does to check it.
func dnsUDP(server netip.AddrPort, q []byte, timeout time.Duration, connected bool, res *DNSResult) ([]byte, error) {
	network := "udp4"
	if server.Addr().Is6() {
		network = "udp6"
	}
	var c *net.UDPConn
	var err error
	if connected {
		c, err = net.DialUDP(network, nil, net.UDPAddrFromAddrPort(server))
	} else {
		c, err = net.ListenUDP(network, nil)
	}
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if connected {
		res.Peer = c.RemoteAddr().String()
		_, err = c.Write(q)
	} else {
		_, err = c.WriteToUDPAddrPort(q, server)
	}
	if err != nil {
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
	dial := func() (net.Conn, error) { return net.DialTimeout("tcp", server.String(), timeout) }
	if server.Addr().Is4In6() {
		dial = func() (net.Conn, error) { return dialFamily6(server.String(), timeout) }
	}
	c, err := dial()
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

// dnsMappedUDP queries an IPv4-mapped server from a dual-stack AF_INET6 socket, as runtimes that use AF_INET6 for
// everything do (Go's "udp6" would be IPv6-only, and Go's "udp" would pick AF_INET).
func dnsMappedUDP(server netip.AddrPort, q []byte, timeout time.Duration, connected bool, res *DNSResult) ([]byte, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		return nil, err
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	sa := &unix.SockaddrInet6{Port: int(server.Port()), Addr: server.Addr().As16()}
	if connected {
		if err := unix.Connect(fd, sa); err != nil {
			return nil, fmt.Errorf("connect %s: %w", server, err)
		}
		if p, err := unix.Getpeername(fd); err == nil {
			res.Peer = sockaddrString(p)
		}
		err = unix.Send(fd, q, 0)
	} else {
		err = unix.Sendto(fd, q, 0, sa)
	}
	if err != nil {
		return nil, fmt.Errorf("send to %s: %w", server, err)
	}
	if l, err := unix.Getsockname(fd); err == nil {
		res.Local = sockaddrString(l)
	}
	buf := make([]byte, 65535)
	n, from, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return nil, fmt.Errorf("read answer: %w", err)
	}
	res.From = sockaddrString(from)
	return buf[:n], nil
}

// sockaddrString writes an AF_INET6 socket address as ip:port, IPv4-mapped ones as IPv4.
func sockaddrString(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port)).String()
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	}
	return fmt.Sprint(sa)
}
