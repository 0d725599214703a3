package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
)

// Wire protocol between bench-client and bench-server. Every connection starts with an 8-byte header:
//
//	'M' 'B' mode 0  size(uint32 big endian)
//
// mode 'r' (request/response; also used by connect mode): then repeatedly the client sends size bytes and the
// server answers size bytes, until the client closes. mode 's' (stream): the client sends bytes until it closes; the
// server only reads. The first request is sent in the same write as the header, so a connect-mode exchange is one
// write and one read on each side.
const (
	headerLen  = 8
	modeRR     = 'r'
	modeStream = 's'
	// MaxSize bounds the request/response size a server accepts.
	MaxSize = 16 << 20
)

func putHeader(b []byte, mode byte, size int) {
	b[0], b[1], b[2], b[3] = 'M', 'B', mode, 0
	binary.BigEndian.PutUint32(b[4:8], uint32(size))
}

func parseHeader(b []byte) (mode byte, size int, err error) {
	if b[0] != 'M' || b[1] != 'B' {
		return 0, 0, fmt.Errorf("bad header magic %q", b[:2])
	}
	size = int(binary.BigEndian.Uint32(b[4:8]))
	switch b[2] {
	case modeRR:
		if size < 1 || size > MaxSize {
			return 0, 0, fmt.Errorf("bad request size %d: want 1 to %d", size, MaxSize)
		}
	case modeStream:
	default:
		return 0, 0, fmt.Errorf("bad mode byte %q", b[2])
	}
	return b[2], size, nil
}

// ListenTCP listens on addr with MPTCP off (Go >= 1.24 would otherwise make MPTCP sockets, which BPF sockmaps
// reject and which are not what an application sidecar sees).
func ListenTCP(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return ln, nil
}

// Serve accepts connections on ln and answers the bench protocol until ctx is done or ln is closed. Errors on single
// connections are counted, not returned. It returns nil when stopped by ctx or by closing ln.
func Serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	defer func() {
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ECONNABORTED) {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveConn(c)
			c.Close()
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		}()
	}
}

func serveConn(c net.Conn) {
	var hdr [headerLen]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	mode, size, err := parseHeader(hdr[:])
	if err != nil {
		return
	}
	if mode == modeStream {
		buf := make([]byte, 256<<10)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}
	buf := make([]byte, size)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}
