package validation

import (
	"context"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"
)

// freePort returns a loopback TCP port nothing listens on right now.
func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// Without capture nothing redirects the probe: ErrFailed after the timeout, and both listeners are closed again.
func TestRunFailsWithoutCapture(t *testing.T) {
	c := Config{OutboundPort: freePort(t), InboundPort: freePort(t), ProbePort: freePort(t), Timeout: 300 * time.Millisecond}
	start := time.Now()
	res, err := Run(context.Background(), zap.NewNop(), c)
	if !errors.Is(err, ErrFailed) || res != nil {
		t.Fatalf("Run without capture: %+v, %v; want ErrFailed", res, err)
	}
	if d := time.Since(start); d < c.Timeout {
		t.Errorf("gave up after %s, before the %s timeout", d, c.Timeout)
	}
	for _, p := range []uint16{c.OutboundPort, c.InboundPort} {
		if conn, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(p)))); err == nil {
			conn.Close()
			t.Errorf("port %d still listening after Run", p)
		}
	}
}

func TestRunRejectsBadPorts(t *testing.T) {
	_, err := Run(context.Background(), zap.NewNop(), Config{OutboundPort: 15001, InboundPort: 15006, Timeout: time.Second})
	if err == nil || errors.Is(err, ErrFailed) {
		t.Fatalf("probe port 0: %v, want a configuration error", err)
	}
}
