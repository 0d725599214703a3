package proxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

const (
	bufSize     = 32 << 10 // buffer mode: one pooled buffer per direction while it copies
	spliceChunk = 4 << 20  // splice mode: counters are updated at least every spliceChunk bytes
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// relay is one relayed connection. Pooled: see relayPool.
type relay struct {
	p       *Proxy
	dir     Direction
	stats   *ListenerStats
	down    *net.TCPConn // accepted from the client
	up      *net.TCPConn // dialed to the original destination
	dst     netip.AddrPort
	buffer  bool  // copy with read/write (CopyBuffer, or the client socket is on the eBPF fast path)
	upN     int64 // bytes down -> up (written by the goroutine copying that way)
	downN   int64 // bytes up -> down
	upErr   error
	downErr error
	failed  atomic.Bool
	eofs    atomic.Int32 // directions that ended with EOF
	wg      sync.WaitGroup
	lrUp    io.LimitedReader // splice mode, reused across chunks (no per-chunk allocation)
	lrDown  io.LimitedReader
}

var relayPool = sync.Pool{New: func() any { return new(relay) }}

// run copies both ways: a new goroutine copies up -> down, the caller's goroutine copies down -> up.
// It returns when both directions are done; both sockets are then closed.
func (r *relay) run() {
	r.wg.Add(1)
	r.p.dispatch(work{r: r})
	r.upN, r.upErr = r.pipe(r.up, r.down, &r.lrUp, &r.stats.BytesUp)
	r.finish(r.up, r.upErr)
	r.wg.Wait()
	_ = r.down.Close()
	_ = r.up.Close()
}

func (r *relay) copyDown() {
	defer r.wg.Done()
	r.downN, r.downErr = r.pipe(r.down, r.up, &r.lrDown, &r.stats.BytesDown)
	r.finish(r.down, r.downErr)
}

// finish ends one direction: EOF from the source becomes a FIN (CloseWrite) to dst, so half-closed
// connections keep working; an error closes both sockets, which also unblocks the other direction.
// The second direction to see EOF skips the shutdown(2): run closes both sockets right away, and close
// sends the same FIN (both receive queues are empty: each socket has been read to EOF).
func (r *relay) finish(dst *net.TCPConn, err error) {
	if err == nil {
		if r.eofs.Add(1) < 2 {
			_ = dst.CloseWrite()
		}
		return
	}
	if r.failed.CompareAndSwap(false, true) {
		if !r.p.forced.Load() || !errors.Is(err, net.ErrClosed) {
			r.p.stats.Errors.Relay.Add(1)
		}
		_ = r.down.Close()
		_ = r.up.Close()
	}
}

// pipe copies src to dst until EOF (nil error) or failure, adding to counter as it goes.
func (r *relay) pipe(dst, src *net.TCPConn, lr *io.LimitedReader, counter *atomic.Uint64) (int64, error) {
	if r.buffer {
		return copyBuffer(dst, src, counter)
	}
	var total int64
	lr.R = src
	for {
		lr.N = spliceChunk
		n, err := dst.ReadFrom(lr) // splice(2) between the two TCP sockets
		total += n
		counter.Add(uint64(n))
		if err != nil {
			return total, err
		}
		if lr.N > 0 { // stopped before the chunk limit: EOF
			return total, nil
		}
	}
}

// copyBuffer is a plain read/write loop through a pooled buffer (no ReadFrom/WriteTo, so no splice).
func copyBuffer(dst, src *net.TCPConn, counter *atomic.Uint64) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var total int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			total += int64(nw)
			counter.Add(uint64(nw))
			if werr != nil {
				return total, werr
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// reset clears r for reuse (the WaitGroup is idle once run returned).
func (r *relay) reset() {
	r.p, r.stats, r.down, r.up = nil, nil, nil, nil
	r.dst = netip.AddrPort{}
	r.buffer = false
	r.upN, r.downN, r.upErr, r.downErr = 0, 0, nil, nil
	r.failed.Store(false)
	r.eofs.Store(0)
	r.lrUp, r.lrDown = io.LimitedReader{}, io.LimitedReader{}
}
