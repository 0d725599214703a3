package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Serve relays until ctx is cancelled, then drains like Envoy: it keeps accepting and relaying new connections for
// DrainAccept, then stops accepting (closes its listeners), waits up to DrainTimeout for active connections,
// closes the rest, writes the stats file a last time and logs a summary.
func (p *Proxy) Serve(ctx context.Context) error {
	if len(p.listeners) == 0 {
		return errors.New("serve: not listening (call Listen first)")
	}
	defer p.cancel()
	if p.cfg.Engine == EngineLoop {
		if err := p.prepareLoops(); err != nil {
			p.closeListeners()
			return fmt.Errorf("start event loops: %w", err)
		}
	}
	var sw *statsWriter
	if p.cfg.StatsFile != "" {
		sw = newStatsWriter(p.cfg.StatsFile, p.cfg.StatsInterval, &p.stats, p.log)
		if err := sw.write(); err != nil {
			if p.engine != nil {
				p.discardLoops()
			}
			p.closeListeners()
			return fmt.Errorf("stats file (uid %d must be able to create files in its directory): %w", os.Geteuid(), err)
		}
		go sw.run()
	}
	var adminSrv *http.Server
	if p.admin != nil {
		adminSrv = p.newAdminServer()
		go func() {
			if err := adminSrv.Serve(p.admin); err != nil && !errors.Is(err, http.ErrServerClosed) {
				p.log.Warn("admin server stopped", zap.Error(err))
			}
		}()
	}
	if p.cfg.Engine == EngineLoop {
		p.runLoops()
		<-ctx.Done()
		p.acceptDuringDrain()
		p.stopping.Store(true)
		p.stopLoops()
	} else {
		p.serveGoroutines(ctx)
	}
	if adminSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = adminSrv.Shutdown(sctx)
		cancel()
	}
	var err error
	if sw != nil {
		err = sw.stop()
	}
	s := p.stats.Snapshot()
	p.log.Info("proxy stopped",
		zap.Uint64("outbound_relayed", s.Outbound.Relayed), zap.Uint64("outbound_bytes_up", s.Outbound.BytesUp),
		zap.Uint64("outbound_bytes_down", s.Outbound.BytesDown),
		zap.Uint64("inbound_relayed", s.Inbound.Relayed), zap.Uint64("inbound_bytes_up", s.Inbound.BytesUp),
		zap.Uint64("inbound_bytes_down", s.Inbound.BytesDown),
		zap.Uint64("err_origdst", s.Errors.OrigDst), zap.Uint64("err_dial", s.Errors.Dial),
		zap.Uint64("err_loop", s.Errors.Loop), zap.Uint64("err_relay", s.Errors.Relay))
	return err
}

// serveGoroutines is Serve's accept and drain for EngineGoroutine.
func (p *Proxy) serveGoroutines(ctx context.Context) {
	var accepting sync.WaitGroup
	for _, l := range p.listeners {
		accepting.Add(1)
		go func() {
			defer accepting.Done()
			p.acceptLoop(l)
		}()
	}
	<-ctx.Done()
	p.acceptDuringDrain()
	p.stopping.Store(true)
	for _, l := range p.listeners {
		_ = l.ln.Close()
	}
	accepting.Wait()
	if !waitTimeout(&p.wg, p.cfg.DrainTimeout) {
		n := p.forceClose()
		p.log.Warn("drain timeout: closed remaining connections", zap.Duration("drain_timeout", p.cfg.DrainTimeout),
			zap.Int("closed", n))
		p.cancel() // pending dials
		p.wg.Wait()
	}
	p.stopWorkers()
}

// EndDrainAccept ends (or skips, if called before Serve's context is cancelled) the drain's accept period: the
// listeners close as soon as the context is cancelled. Idempotent; safe from any goroutine.
func (p *Proxy) EndDrainAccept() { p.drainCutOnce.Do(func() { close(p.drainCut) }) }

// acceptDuringDrain is the first drain phase: everything keeps running (listeners included) for DrainAccept.
func (p *Proxy) acceptDuringDrain() {
	if p.cfg.DrainAccept <= 0 {
		return
	}
	p.log.Info("draining: still accepting and relaying new connections", zap.Duration("drain_accept", p.cfg.DrainAccept))
	t := time.NewTimer(p.cfg.DrainAccept)
	defer t.Stop()
	select {
	case <-t.C:
	case <-p.drainCut:
	}
	p.log.Info("draining: stopped accepting; waiting for active connections", zap.Duration("drain_timeout", p.cfg.DrainTimeout))
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

func (p *Proxy) forceClose() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.forced.Store(true)
	for r := range p.active {
		_ = r.down.Close()
		_ = r.up.Close()
	}
	return len(p.active)
}

func (p *Proxy) acceptLoop(l *listener) {
	var backoff time.Duration
	for {
		c, err := l.ln.AcceptTCP()
		if err != nil {
			if p.stopping.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: count, back off, retry.
			p.stats.Errors.Accept.Add(1)
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			p.log.Warn("accept failed", zap.Stringer("direction", l.dir), zap.Error(err), zap.Duration("retry_in", backoff))
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		ls := p.stats.listener(l.dir)
		ls.Accepted.Add(1)
		ls.Active.Add(1)
		p.wg.Add(1)
		p.dispatch(work{l: l, c: c, ls: ls})
	}
}
