package proxy

import "net"

// Goroutine reuse. Every relayed connection needs two goroutines (handle, which then copies one direction, and
// copyDown). Starting fresh ones for every connection costs a goroutine creation and, more, growing the new
// stack (the dial path is deep) by copying it, several times per connection. Instead a goroutine that finished
// its work waits, up to maxIdleWorkers of them, for the next piece of work and keeps its grown stack.

// maxIdleWorkers bounds the goroutines parked waiting for work (each keeps its stack, a few KiB to some tens).
const maxIdleWorkers = 128

// work is one job for a worker: relay r's up -> down direction when r is set, else an accepted connection.
type work struct {
	r  *relay
	l  *listener
	c  *net.TCPConn
	ls *ListenerStats
}

func (p *Proxy) runWork(w work) {
	if w.r != nil {
		w.r.copyDown()
		return
	}
	p.handle(w.l, w.c, w.ls)
}

// dispatch hands w to an idle worker, or starts a new one. It must not be called after stopWorkers.
func (p *Proxy) dispatch(w work) {
	select {
	case p.work <- w:
	default:
		go p.worker(w)
	}
}

func (p *Proxy) worker(w work) {
	for {
		p.runWork(w)
		if p.idle.Add(1) > maxIdleWorkers {
			p.idle.Add(-1)
			return
		}
		var ok bool
		w, ok = <-p.work
		p.idle.Add(-1)
		if !ok {
			return
		}
	}
}

// stopWorkers releases the idle workers; call it once no connection is being handled any more.
func (p *Proxy) stopWorkers() { close(p.work) }
