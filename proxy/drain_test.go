package proxy

import (
	"io"
	"net"
	"testing"
	"time"
)

// TestDrainKeepsAccepting: after stop, a new connection within DrainAccept is accepted and relayed; after it, the
// listener is closed while the connection opened during the drain keeps working until it ends; then Serve returns.
func TestDrainKeepsAccepting(t *testing.T) { forEachEngine(t, testDrainKeepsAccepting) }

func testDrainKeepsAccepting(t *testing.T, eng Engine) {
	tp := startProxy(t, eng, Config{DrainAccept: 700 * time.Millisecond, DrainTimeout: 10 * time.Second})
	tp.res.set(serve(t, echo))
	tp.stop()
	time.Sleep(50 * time.Millisecond) // Serve has seen the stop
	c := dialTCP(t, tp.Addr(Outbound))
	if _, err := c.Write([]byte("during drain")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("during drain"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "during drain" {
		t.Fatalf("connection opened during the drain period not relayed: %q %v", got, err)
	}
	waitFor(t, func() bool { // the accept period ends: the listener closes
		c2, err := net.Dial("tcp4", tp.Addr(Outbound).String())
		if err == nil {
			c2.Close()
		}
		return err != nil
	})
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("connection opened during the drain cut when accepting stopped: %v", err)
	}
	tp.endLastConn(t, c)
	if s := tp.Stats().Snapshot(); s.Outbound.BytesUp != 13 || s.Errors.Relay != 0 { // waitFor's probes are relayed too
		t.Fatalf("stats %+v", s)
	}
}
