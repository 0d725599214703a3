package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/dns/dnsmessage"
)

// serveUDP reads queries from one UDP socket and answers each from its own goroutine (at most dnsMaxInflight).
func (d *DNS) serveUDP(u *net.UDPConn) {
	buf := make([]byte, dnsMaxMessage)
	for {
		n, client, err := u.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			d.log.Warn("dns udp read", zap.Error(err))
			continue
		}
		if n < dnsHeaderLen {
			continue // not a DNS message
		}
		select {
		case d.inflight <- struct{}{}:
		default:
			d.log.Debug("dns: too many queries in flight, dropped one", zap.Stringer("client", client))
			continue
		}
		q := append([]byte(nil), buf[:n]...)
		d.wg.Add(1)
		go func() {
			defer func() { <-d.inflight; d.wg.Done() }()
			ans := d.forward(q, forwardUDP)
			if _, err := u.WriteToUDPAddrPort(ans, client); err != nil {
				d.log.Debug("dns udp answer", zap.Stringer("client", client), zap.Error(err))
			}
		}()
	}
}

// serveTCP accepts TCP clients; each is served from its own goroutine.
func (d *DNS) serveTCP(ln *net.TCPListener) {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			d.log.Warn("dns tcp accept", zap.Error(err))
			time.Sleep(10 * time.Millisecond)
			continue
		}
		d.mu.Lock()
		d.conns[c] = struct{}{}
		d.mu.Unlock()
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.serveTCPConn(c)
			d.mu.Lock()
			delete(d.conns, c)
			d.mu.Unlock()
			_ = c.Close()
		}()
	}
}

// serveTCPConn answers the length-prefixed queries of one client, in order, until EOF or IdleTimeout.
func (d *DNS) serveTCPConn(c *net.TCPConn) {
	for {
		_ = c.SetReadDeadline(time.Now().Add(d.cfg.IdleTimeout))
		q, err := readTCPMessage(c)
		if err != nil {
			return
		}
		_ = c.SetWriteDeadline(time.Now().Add(d.cfg.Timeout))
		if err := writeTCPMessage(c, d.forward(q, forwardTCP)); err != nil {
			return
		}
	}
}

// exchange sends one query to one server and returns its answer.
type exchange func(server netip.AddrPort, q []byte, timeout time.Duration) ([]byte, error)

// forward asks each upstream in turn and returns the first answer to q (same ID, a response), or SERVFAIL.
func (d *DNS) forward(q []byte, ex exchange) []byte {
	for _, s := range d.cfg.Upstreams {
		ans, err := ex(s, q, d.cfg.Timeout)
		if err == nil {
			return ans
		}
		d.log.Debug("dns upstream failed", zap.Stringer("server", s), zap.Error(err))
	}
	return servfail(q)
}

// forwardUDP sends q from a socket connected to server (only it can answer) and waits for the matching answer.
func forwardUDP(server netip.AddrPort, q []byte, timeout time.Duration) ([]byte, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(server))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	buf := make([]byte, dnsMaxMessage)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		if answers(q, buf[:n]) {
			return buf[:n], nil
		}
		// A stray or spoofed datagram: keep waiting for the real answer until the deadline.
	}
}

// forwardTCP sends q over a new TCP connection to server and reads one length-prefixed answer.
func forwardTCP(server netip.AddrPort, q []byte, timeout time.Duration) ([]byte, error) {
	c, err := net.DialTimeout("tcp", server.String(), timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if err := writeTCPMessage(c, q); err != nil {
		return nil, err
	}
	ans, err := readTCPMessage(c)
	if err != nil {
		return nil, err
	}
	if !answers(q, ans) {
		return nil, fmt.Errorf("answer from %s does not match the query", server)
	}
	return ans, nil
}

const dnsHeaderLen = 12

// answers reports whether a is a response (QR set) with q's ID.
func answers(q, a []byte) bool {
	return len(a) >= dnsHeaderLen && a[0] == q[0] && a[1] == q[1] && a[2]&0x80 != 0
}

func readTCPMessage(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	m := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(r, m); err != nil {
		return nil, err
	}
	if len(m) < dnsHeaderLen {
		return nil, fmt.Errorf("dns message of %d bytes: too short", len(m))
	}
	return m, nil
}

func writeTCPMessage(w io.Writer, m []byte) error {
	if len(m) > dnsMaxMessage {
		return fmt.Errorf("dns message of %d bytes: too long for TCP framing", len(m))
	}
	b := make([]byte, 2+len(m))
	binary.BigEndian.PutUint16(b, uint16(len(m)))
	copy(b[2:], m)
	_, err := w.Write(b)
	return err
}

// servfail answers q with SERVFAIL (same ID, opcode, RD and questions); for an unparsable q, a bare SERVFAIL
// header with its ID.
func servfail(q []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	rh := dnsmessage.Header{ID: h.ID, Response: true, OpCode: h.OpCode, RecursionDesired: h.RecursionDesired,
		RecursionAvailable: true, RCode: dnsmessage.RCodeServerFailure}
	var qs []dnsmessage.Question
	if err == nil {
		qs, _ = p.AllQuestions()
	} else {
		rh.ID = binary.BigEndian.Uint16(q)
	}
	b := dnsmessage.NewBuilder(nil, rh)
	if err := b.StartQuestions(); err == nil {
		for _, question := range qs {
			if b.Question(question) != nil {
				break
			}
		}
	}
	out, err := b.Finish()
	if err != nil {
		hdr := make([]byte, dnsHeaderLen)
		copy(hdr, q[:2])
		hdr[2], hdr[3] = 0x81, 0x82 // QR, RD; RA, SERVFAIL
		return hdr
	}
	return out
}
