// Command nettool is the end-to-end tests' socket tool. It uses only the plain socket API, so what it sees is what
// any application sees:
//
//	nettool dial ADDR [-send N] [-timeout D] [-family6] [-bind IP]  connect, read the server's first line, send N bytes, half-close,
//	                                          read the echo; print one JSON DialResult; exit 1 on failure
//	nettool origdst ADDR                      a minimal transparent proxy: accept, getsockopt(SO_ORIGINAL_DST),
//	                                          dial it, relay; one JSON line per connection on stdout
//	nettool dns SERVER [-name N] [-tcp]     one A query over UDP (unconnected socket: the answer's source is
//	                                          shown) or TCP; print one JSON DNSResult; exit 1 without an answer
//	nettool serve ADDR                        echo server: "<local addr> <peer addr>\n", then echo until EOF
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: nettool dial|dns|origdst|serve ADDR [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "dial":
		err = dialCmd(os.Args[2], os.Args[3:])
	case "origdst":
		err = origdstCmd(os.Args[2])
	case "dns":
		err = dnsCmd(os.Args[2], os.Args[3:])
	case "serve":
		err = serveCmd(os.Args[2])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nettool:", err)
		os.Exit(1)
	}
}
