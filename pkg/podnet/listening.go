package podnet

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Listening reports whether a TCP socket listens on port inside the pod's netns (/proc/thread-self/net/tcp{,6},
// state 0A), without connecting to it.
func (p *Pod) Listening(port int) (bool, error) {
	found := false
	err := p.Do(func() error {
		for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
			ok, err := listensIn(f, port)
			if err != nil {
				return err
			}
			found = found || ok
		}
		return nil
	})
	return found, err
}

// WaitListening polls Listening until it is true or ctx ends.
func (p *Pod) WaitListening(ctx context.Context, port int) error {
	for {
		ok, err := p.Listening(port)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nothing listens on port %d in pod %s: %w", port, p.Name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func listensIn(file string, port int) (bool, error) {
	fh, err := os.Open(file)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || fields[3] != "0A" {
			continue
		}
		if i := strings.LastIndexByte(fields[1], ':'); i >= 0 {
			if p, err := strconv.ParseUint(fields[1][i+1:], 16, 16); err == nil && int(p) == port {
				return true, nil
			}
		}
	}
	return false, sc.Err()
}
