package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// samePortCmd: nettool sameport DEST[,DEST...] -port P: one socket per destination, each with SO_REUSEADDR and
// bound to 0.0.0.0:P before connect (bind-before-connect from one source port), all connected at once; then each
// reads its server's greeting and checks an echo. Prints a JSON array of DialResult, one per destination in order;
// exit 1 when any failed.
func samePortCmd(dests string, args []string) error {
	fs := flag.NewFlagSet("sameport", flag.ContinueOnError)
	port := fs.Int("port", 0, "source port every socket binds")
	timeout := fs.Duration("timeout", 10*time.Second, "per-connection timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *port <= 0 || *port > 65535 {
		return fmt.Errorf("invalid -port %d", *port)
	}
	list := strings.Split(dests, ",")
	res := make([]DialResult, len(list))
	conns := make([]net.Conn, len(list))
	d := net.Dialer{Timeout: *timeout, LocalAddr: &net.TCPAddr{IP: net.IPv4zero, Port: *port}, Control: reuseAddr}
	for i, dst := range list { // all connected before any is used: the 4-tuples must coexist
		c, err := d.Dial("tcp4", dst)
		if err != nil {
			res[i].Error = fmt.Sprintf("connect from port %d: %v", *port, err)
			continue
		}
		conns[i] = c
	}
	failed := false
	for i, c := range conns {
		if c != nil {
			res[i] = exchange(c, 64, *timeout)
			c.Close()
		}
		failed = failed || !res[i].OK
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return err
	}
	if failed {
		return fmt.Errorf("sameport: not every connection worked")
	}
	return nil
}

func reuseAddr(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	}); err != nil {
		return err
	}
	return serr
}
