// Command nettool is the end-to-end tests' socket tool. It uses only the plain socket API, so what it sees is what
// any application sees:
//
//	nettool dial ADDR [-send N] [-timeout D] [-family6] [-bind IP]  connect, read the server's first line, send N bytes, half-close,
//	                                          read the echo; print one JSON DialResult; exit 1 on failure
//	nettool origdst ADDR [SRC]                a minimal transparent proxy: accept, getsockopt(SO_ORIGINAL_DST, SOL_IPV6 for IPv6),
//	                                          dial it (from source address SRC if given: 127.0.0.6 for an inbound
//	                                          sidecar), relay; one JSON line per connection on stdout
//	nettool socks ADDR                        minimal SOCKS5 server (CONNECT to IPv4, no authentication)
//	nettool dns SERVER [-name N] [-tcp|-connected]  one A query over UDP (unconnected socket, or connected: the
//	                                          answer's source is shown) or TCP; print one JSON DNSResult; exit 1
//	                                          without an answer
//	nettool serve ADDR                        echo server: "<local addr> <peer addr>\n", then echo until EOF
//	nettool push ADDR [-max N] [-stall D]     write up to N bytes to a peer that does not read; print one JSON
//	                                          PushResult: bytes accepted before the sender was held back
//	nettool burst DESTS -n N -go FILE         N concurrent connects, then (once FILE exists) check each; one JSON
//	                                          BurstResult
//	nettool sameport DESTS -port P            bind-before-connect with SO_REUSEADDR from source port P to every
//	                                          destination at once; a JSON array of DialResult
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: nettool dial|dns|origdst|push|socks|serve ADDR [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "dial":
		err = dialCmd(os.Args[2], os.Args[3:])
	case "origdst":
		src := ""
		if len(os.Args) > 3 {
			src = os.Args[3]
		}
		err = origdstCmd(os.Args[2], src)
	case "push":
		err = pushCmd(os.Args[2], os.Args[3:])
	case "socks":
		err = socksCmd(os.Args[2])
	case "dns":
		err = dnsCmd(os.Args[2], os.Args[3:])
	case "serve":
		err = serveCmd(os.Args[2])
	case "burst":
		err = burstCmd(os.Args[2], os.Args[3:])
	case "sameport":
		err = samePortCmd(os.Args[2], os.Args[3:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nettool:", err)
		os.Exit(1)
	}
}
