package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DialResult is what one dial saw; the tests decode it.
type DialResult struct {
	Reached string `json:"reached"` // from the server's first line: the address it accepted on
	Peer    string `json:"peer"`    // from the server's first line: the client address it saw
	Local   string `json:"local"`
	Remote  string `json:"remote"` // getpeername() after connect
	Sent    int64  `json:"sent"`
	Echoed  int64  `json:"echoed"`
	OK      bool   `json:"ok"` // echo matched what was sent
	Error   string `json:"error,omitempty"`
}

func dialCmd(addr string, args []string) error {
	fs := flag.NewFlagSet("dial", flag.ContinueOnError)
	send := fs.Int64("send", 64, "bytes to send")
	timeout := fs.Duration("timeout", 5*time.Second, "overall timeout")
	family6 := fs.Bool("family6", false, "connect from an AF_INET6 socket (an IPv4-mapped ADDR then stays IPv4-mapped, as Java and other runtimes dial it; Go's net package would use AF_INET)")
	bind := fs.String("bind", "", "source address to bind before connecting (for example 127.0.0.6, istio's passthrough source)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	res := dial(addr, *send, *timeout, *family6, *bind)
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return err
	}
	if res.Error != "" {
		return fmt.Errorf("dial %s: %s", addr, res.Error)
	}
	return nil
}

func dial(addr string, send int64, timeout time.Duration, family6 bool, bind string) DialResult {
	var res DialResult
	var conn net.Conn
	var err error
	switch {
	case family6:
		conn, err = dialFamily6(addr, timeout)
	case bind != "":
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(bind)}}
		conn, err = d.Dial("tcp", addr)
	default:
		conn, err = net.DialTimeout("tcp", addr, timeout)
	}
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer conn.Close()
	return exchange(conn, send, timeout)
}

// exchange reads the server's greeting on conn, sends send bytes, half-closes and checks the echo.
func exchange(conn net.Conn, send int64, timeout time.Duration) DialResult {
	var res DialResult
	_ = conn.SetDeadline(time.Now().Add(timeout))
	res.Local, res.Remote = conn.LocalAddr().String(), conn.RemoteAddr().String()
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		res.Error = fmt.Sprintf("read greeting: %v", err)
		return res
	}
	greeting := strings.Fields(line)
	if len(greeting) != 2 {
		res.Error = fmt.Sprintf("bad greeting %q", line)
		return res
	}
	res.Reached, res.Peer = greeting[0], greeting[1]

	sentSum, echoSum := sha256.New(), sha256.New()
	errc := make(chan error, 1)
	go func() {
		src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{7}), send), sentSum)
		n, err := io.Copy(conn, src)
		res.Sent = n
		if err == nil {
			err = conn.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	n, err := io.Copy(echoSum, r)
	res.Echoed = n
	if werr := <-errc; werr != nil && res.Error == "" {
		res.Error = fmt.Sprintf("send: %v", werr)
	}
	if err != nil && res.Error == "" {
		res.Error = fmt.Sprintf("read echo: %v", err)
	}
	res.OK = res.Error == "" && res.Sent == send && string(sentSum.Sum(nil)) == string(echoSum.Sum(nil))
	if !res.OK && res.Error == "" {
		res.Error = fmt.Sprintf("echo mismatch: sent %d, echoed %d", res.Sent, res.Echoed)
	}
	return res
}

// dialFamily6 connects from an AF_INET6 socket with the plain socket API, whatever the address (IPv4-mapped too).
func dialFamily6(addr string, timeout time.Duration) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, err
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	if err := unix.Connect(fd, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("connect %s from an AF_INET6 socket: %w", addr, err)
	}
	f := os.NewFile(uintptr(fd), "dial6")
	defer f.Close()
	return net.FileConn(f)
}
