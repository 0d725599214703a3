package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// socksCmd is a minimal SOCKS5 server (no authentication, CONNECT to an IPv4 address only): the upstream that a
// transparent redirector such as redsocks hands captured connections to.
func socksCmd(addr string) error {
	return serveEach(addr, func(c net.Conn) {
		up, err := socksHandshake(c)
		if err != nil {
			return
		}
		defer up.Close()
		go func() { _, _ = io.Copy(up, c); _ = up.(*net.TCPConn).CloseWrite() }()
		_, _ = io.Copy(c, up)
	})
}

// socksHandshake reads the greeting and a CONNECT request (RFC 1928), dials the target and answers.
func socksHandshake(c net.Conn) (net.Conn, error) {
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(c, hdr); err != nil || hdr[0] != 5 {
		return nil, fmt.Errorf("bad greeting: %v", err)
	}
	if _, err := io.ReadFull(c, make([]byte, hdr[1])); err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{5, 0}); err != nil { // no authentication
		return nil, err
	}
	req := make([]byte, 10) // VER CMD RSV ATYP=1 DST.ADDR(4) DST.PORT(2)
	if _, err := io.ReadFull(c, req); err != nil || req[1] != 1 || req[3] != 1 {
		_, _ = c.Write([]byte{5, 7, 0, 1, 0, 0, 0, 0, 0, 0})
		return nil, fmt.Errorf("unsupported request: %v", err)
	}
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte(req[4:8])), binary.BigEndian.Uint16(req[8:10]))
	up, err := net.DialTimeout("tcp4", dst.String(), 5*time.Second)
	if err != nil {
		_, _ = c.Write([]byte{5, 5, 0, 1, 0, 0, 0, 0, 0, 0})
		return nil, err
	}
	if _, err := c.Write([]byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0}); err != nil {
		up.Close()
		return nil, err
	}
	return up, nil
}
