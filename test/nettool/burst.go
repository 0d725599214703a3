package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// BurstResult counts what a burst of concurrent connections saw; the tests decode it.
type BurstResult struct {
	Connected     int      `json:"connected"`     // connect() succeeded
	RefusedEPERM  int      `json:"refused_eperm"` // connect() failed with EPERM (refused by capture at capacity)
	ConnectOther  int      `json:"connect_other"` // connect() failed otherwise
	OK            int      `json:"ok"`            // reached its destination, echo intact
	WrongDest     int      `json:"wrong_dest"`    // the server that answered is not the one dialled
	BadPeername   int      `json:"bad_peername"`  // getpeername() after connect was not the dialled address
	FailedAfter   int      `json:"failed_after"`  // reset, closed or timed out after a successful connect
	Errors        []string `json:"errors,omitempty"`
	ConnectErrors []string `json:"connect_errors,omitempty"`
}

// burstCmd: nettool burst DEST[,DEST...] -n N -go FILE: N concurrent connects (round robin over the destinations);
// once every connect has returned it prints "connected N" on stderr and waits until FILE exists, then reads each
// server's greeting, sends and checks an echo, closes, and prints one JSON BurstResult.
func burstCmd(dests string, args []string) error {
	fs := flag.NewFlagSet("burst", flag.ContinueOnError)
	n := fs.Int("n", 100, "connections")
	goFile := fs.String("go", "", "wait for this file before using the connections")
	timeout := fs.Duration("timeout", 60*time.Second, "per-connection timeout after the go file appears")
	closeNow := fs.Bool("close", false, "close every connection right after connect (never used)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	list := strings.Split(dests, ",")
	conns := make([]net.Conn, *n)
	errs := make([]error, *n)
	var wg sync.WaitGroup
	for i := range *n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conns[i], errs[i] = net.DialTimeout("tcp", list[i%len(list)], 30*time.Second)
		}()
	}
	wg.Wait()
	var res BurstResult
	for i, err := range errs {
		switch {
		case err == nil:
			res.Connected++
			if conns[i].RemoteAddr().String() != list[i%len(list)] {
				res.BadPeername++
			}
		case errors.Is(err, syscall.EPERM):
			res.RefusedEPERM++
		default:
			res.ConnectOther++
			if len(res.ConnectErrors) < 5 {
				res.ConnectErrors = append(res.ConnectErrors, err.Error())
			}
		}
	}
	fmt.Fprintf(os.Stderr, "connected %d\n", res.Connected)
	if *closeNow {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		return json.NewEncoder(os.Stdout).Encode(res)
	}
	for *goFile != "" {
		if _, err := os.Stat(*goFile); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	var mu sync.Mutex
	for i, c := range conns {
		if c == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			verdict, err := burstUse(c, list[i%len(list)], *timeout)
			mu.Lock()
			defer mu.Unlock()
			switch verdict {
			case "ok":
				res.OK++
			case "wrong":
				res.WrongDest++
			default:
				res.FailedAfter++
			}
			if err != nil && len(res.Errors) < 5 {
				res.Errors = append(res.Errors, err.Error())
			}
		}()
	}
	wg.Wait()
	return json.NewEncoder(os.Stdout).Encode(res)
}

// burstUse reads the greeting, checks the destination, and checks a short echo.
func burstUse(c net.Conn, dest string, timeout time.Duration) (string, error) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return "failed", fmt.Errorf("read greeting: %w", err)
	}
	if f := strings.Fields(line); len(f) != 2 || f[0] != dest {
		return "wrong", fmt.Errorf("dialled %s, greeting %q", dest, line)
	}
	msg := []byte("meshcap burst\n")
	if _, err := c.Write(msg); err != nil {
		return "failed", fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(r, buf); err != nil || string(buf) != string(msg) {
		return "failed", fmt.Errorf("echo %q: %v", buf, err)
	}
	return "ok", nil
}
