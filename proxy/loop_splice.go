package proxy

import (
	"errors"

	"golang.org/x/sys/unix"
)

// Splice for bulk directions of the loop engine.
//
// A direction starts with read/write through the loop's buffer (cheapest for request/response messages). When a
// read fills the whole buffer the direction is bulk, and with CopySplice (the default) it switches for good to
// splice(2): socket -> pipe -> socket, with no copy through user space. Never for eBPF fast-path connections
// (their data sits in the sk_msg queue, which splice does not see). A pipe is taken from the loop's pool for each
// transfer and given back as soon as it is empty; only a direction whose destination is full keeps one, holding
// the bytes not yet written (its pending data, like the buffer of read/write mode).

const (
	pipeSize     = loopBufSize // F_SETPIPE_SZ; a pipe that cannot grow keeps the default (64 KiB)
	maxIdlePipes = 64
	spliceFlags  = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK
)

type pipePair struct{ r, w int }

// getPipe takes an empty pipe from the pool or makes one.
func (l *evloop) getPipe() (pipePair, error) {
	if n := len(l.pipes); n > 0 {
		pp := l.pipes[n-1]
		l.pipes = l.pipes[:n-1]
		return pp, nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return pipePair{}, err
	}
	_, _ = unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, pipeSize)
	return pipePair{r: fds[0], w: fds[1]}, nil
}

// putPipe returns an empty pipe to the pool (or closes it when the pool is full).
func (l *evloop) putPipe(pp pipePair) {
	if len(l.pipes) < maxIdlePipes {
		l.pipes = append(l.pipes, pp)
		return
	}
	closePipe(pp)
}

func closePipe(pp pipePair) {
	_ = unix.Close(pp.r)
	_ = unix.Close(pp.w)
}

// pumpSplice is pump for a direction in splice mode. It reads on until EAGAIN: a short splice says nothing about
// the socket being drained (the pipe may have run out of slots).
func (l *evloop) pumpSplice(src, dst *side) {
	c := src.c
	for src.readable && src.pipeN == 0 && !src.eof && !c.closed {
		pp, err := l.getPipe()
		if err != nil {
			l.fail(c, err)
			return
		}
		n, err := unix.Splice(src.fd, nil, pp.w, nil, pipeSize, spliceFlags)
		switch {
		case n > 0:
			l.spliced++
			if !l.spliceOut(src, dst, pp, int(n)) {
				return
			}
		case err == nil: // EOF
			l.putPipe(pp)
			src.eof = true
			src.readable = false
			l.onEOF(src, dst)
			return
		case errors.Is(err, unix.EAGAIN):
			l.putPipe(pp)
			src.readable = false
			return
		case errors.Is(err, unix.EINTR):
			l.putPipe(pp)
		default:
			l.putPipe(pp)
			l.fail(c, err)
			return
		}
	}
}

// spliceOut moves n bytes from pp to dst. What dst does not take stays in pp, which src then keeps as its
// pending data. It reports whether src may be read on.
func (l *evloop) spliceOut(src, dst *side, pp pipePair, n int) bool {
	w, err := unix.Splice(pp.r, nil, dst.fd, nil, n, spliceFlags)
	if err != nil && !errors.Is(err, unix.EAGAIN) {
		closePipe(pp) // not empty: never back to the pool
		l.fail(src.c, err)
		return false
	}
	w = max(w, 0)
	l.count(src, int(w))
	if int(w) == n {
		l.putPipe(pp)
		return true
	}
	l.stalls++
	src.pipe, src.pipeN = pp, n-int(w)
	return false
}

// flushPipe writes src's pending pipe content to the other side (now writable), then resumes reading src.
func (l *evloop) flushPipe(src *side) {
	pp, n := src.pipe, src.pipeN
	src.pipe, src.pipeN = pipePair{}, 0
	if l.spliceOut(src, src.other(), pp, n) && src.readable {
		l.pump(src)
	}
}

// dropPipe closes the pipe a closing side still holds.
func (s *side) dropPipe() {
	if s.pipeN > 0 {
		closePipe(s.pipe)
		s.pipe, s.pipeN = pipePair{}, 0
	}
}
