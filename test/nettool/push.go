package main

import (
	"encoding/json"
	"errors"
	"flag"
	"net"
	"os"
	"time"
)

// PushResult is what `nettool push` saw: how many bytes the kernel accepted from write() before the sender was
// held back (no progress for -stall), or before -max was reached.
type PushResult struct {
	Accepted int64  `json:"accepted"`
	Blocked  bool   `json:"blocked"` // the sender was held back (backpressure) before -max
	Error    string `json:"error,omitempty"`
}

// pushCmd connects to addr and writes up to -max bytes to a peer that is expected not to read.
func pushCmd(addr string, args []string) error {
	fs := flag.NewFlagSet("push", flag.ContinueOnError)
	maxBytes := fs.Int64("max", 1<<30, "stop after this many bytes")
	stall := fs.Duration("stall", time.Second, "a write that makes no progress for this long means the sender is held back")
	if err := fs.Parse(args); err != nil {
		return err
	}
	res := push(addr, *maxBytes, *stall)
	return json.NewEncoder(os.Stdout).Encode(res)
}

func push(addr string, maxBytes int64, stall time.Duration) PushResult {
	var res PushResult
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer conn.Close()
	buf := make([]byte, 64<<10)
	for res.Accepted < maxBytes {
		_ = conn.SetWriteDeadline(time.Now().Add(stall))
		n, err := conn.Write(buf[:min(int64(len(buf)), maxBytes-res.Accepted)])
		res.Accepted += int64(n)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			if n > 0 {
				continue // progress within the stall time: not held back yet
			}
			res.Blocked = true
			return res
		}
		if err != nil {
			res.Error = err.Error()
			return res
		}
	}
	return res
}
