package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func listen(addr string) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	return lc.Listen(context.Background(), "tcp", addr)
}

// serveEach listens on addr and runs handle for each connection in its own goroutine, closing it afterwards.
func serveEach(addr string, handle func(c net.Conn)) error {
	ln, err := listen(addr)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			handle(c)
		}()
	}
}

func serveCmd(addr string) error {
	return serveEach(addr, func(c net.Conn) {
		fmt.Fprintf(c, "%s %s\n", c.LocalAddr(), c.RemoteAddr())
		_, _ = io.Copy(c, c)
	})
}

// origdstCmd is a deliberately plain transparent proxy: the only way it learns where a connection was going is
// getsockopt(SOL_IP, SO_ORIGINAL_DST), as Envoy's original_dst listener filter does.
func origdstCmd(addr, src string) error {
	ln, err := listen(addr)
	if err != nil {
		return err
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	if src != "" {
		ip := net.ParseIP(src)
		if ip == nil {
			return fmt.Errorf("invalid source address %q", src)
		}
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			dst, err := originalDst(c.(*net.TCPConn))
			rec := map[string]string{"client": c.RemoteAddr().String(), "local": c.LocalAddr().String()}
			if err != nil {
				rec["error"] = err.Error()
			} else {
				rec["origdst"] = dst.String()
			}
			mu.Lock()
			_ = enc.Encode(rec)
			mu.Unlock()
			if err != nil {
				return
			}
			up, err := d.Dial("tcp", dst.String())
			if err != nil {
				return
			}
			defer up.Close()
			go func() { _, _ = io.Copy(up, c); _ = up.(*net.TCPConn).CloseWrite() }()
			_, _ = io.Copy(c, up)
		}()
	}
}

func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	// An IPv6 connection (not IPv4-mapped) asks SOL_IPV6/IP6T_SO_ORIGINAL_DST and gets a sockaddr_in6, as Envoy does.
	level, v6 := unix.SOL_IP, false
	if la, ok := c.LocalAddr().(*net.TCPAddr); ok && la.IP.To4() == nil {
		level, v6 = unix.SOL_IPV6, true
	}
	var sa [28]byte
	var serr error
	err = raw.Control(func(fd uintptr) {
		size := uint32(16)
		if v6 {
			size = 28
		}
		_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, uintptr(level), 80, // SO_ORIGINAL_DST, IP6T_SO_ORIGINAL_DST
			uintptr(unsafe.Pointer(&sa[0])), uintptr(unsafe.Pointer(&size)), 0)
		if e != 0 {
			serr = fmt.Errorf("getsockopt SO_ORIGINAL_DST (level %d): %w", level, e)
		}
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		return netip.AddrPort{}, serr
	}
	port := binary.BigEndian.Uint16(sa[2:4])
	if v6 {
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(sa[8:24])), port), nil
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(sa[4:8])), port), nil
}
