package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// process is a child started inside a pod. Its stdout lines go to lines (closed at EOF); stderr is kept (tail).
type process struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr *tailBuffer
	done   chan struct{}
	err    error
	once   sync.Once
}

// startProcess starts bin in pod (netns + cgroup, cred when given).
func startProcess(pod *podnet.Pod, cred *podnet.Cred, bin string, args ...string) (*process, error) {
	p := &process{cmd: exec.Command(bin, args...), lines: make(chan string, 16), stderr: &tailBuffer{max: 4096},
		done: make(chan struct{})}
	p.cmd.Stderr = p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("stdout pipe: %w", err)
	}
	if err := pod.Start(p.cmd, cred); err != nil {
		return nil, err
	}
	var readDone sync.WaitGroup
	readDone.Add(1)
	go func() {
		defer readDone.Done()
		defer close(p.lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	go func() {
		readDone.Wait() // Wait closes the pipe: read it to EOF first
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for exit, at most d; on timeout the process is killed.
func (p *process) wait(d time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		_ = p.stop()
		return fmt.Errorf("%s: still running after %s, killed", p.cmd.Path, d)
	}
}

// stop ends the process (SIGTERM, then SIGKILL after 2 s) by the pid this package started, and reaps it.
func (p *process) stop() error {
	p.once.Do(func() {
		if p.exited() {
			return
		}
		// Drain stdout so a blocked writer cannot keep the child alive.
		go func() {
			for range p.lines {
			}
		}()
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(2 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return nil
}

func (p *process) stderrTail() string { return strings.TrimSpace(p.stderr.String()) }

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(b), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// listening reports whether a TCP socket listens on port in pod's netns (/proc/thread-self/net/tcp, state 0A).
func listening(pod *podnet.Pod, port int) (bool, error) {
	found := false
	err := pod.Do(func() error {
		for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
			data, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			for _, line := range bytes.Split(data, []byte("\n")) {
				fields := strings.Fields(string(line))
				if len(fields) < 4 || fields[3] != "0A" {
					continue
				}
				if i := strings.LastIndexByte(fields[1], ':'); i >= 0 {
					if v, err := strconv.ParseUint(fields[1][i+1:], 16, 16); err == nil && int(v) == port {
						found = true
					}
				}
			}
		}
		return nil
	})
	return found, err
}
