package bench

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/meshcap/meshcap/pkg/podnet"
)

// TestConntrackSamplerPerNetns checks that the sampler reads the count of the pod's own netns: a NAT rule in one
// pod switches conntrack on there (the trap that would skew a direct baseline), and a second pod stays at 0.
func TestConntrackSamplerPerNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("needs iptables")
	}
	if _, err := os.Stat(conntrackCountPath); err != nil {
		t.Skip("kernel without conntrack")
	}
	id := randHex(3)
	var pods []*podnet.Pod
	for _, role := range []string{"n", "p"} {
		p, err := podnet.NewPod("mcb" + id + "-" + role)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := p.Close(); err != nil {
				t.Error(err)
			}
		})
		pods = append(pods, p)
	}
	natPod, plainPod := pods[0], pods[1]
	if out, err := exec.Command("nsenter", "--net="+natPod.NetnsPath, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9", "-j", "REDIRECT", "--to-ports", "15001").CombinedOutput(); err != nil {
		t.Fatalf("add nat rule: %v: %s", err, out)
	}
	for _, p := range pods {
		ln, err := p.Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		for range 5 {
			err := p.Do(func() error {
				d := dialer()
				c, err := d.DialContext(context.Background(), "tcp", ln.Addr().String())
				if err != nil {
					return err
				}
				return c.Close()
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, c := range []struct {
		pod  *podnet.Pod
		want func(int64) bool
		desc string
	}{{natPod, func(n int64) bool { return n >= 5 }, ">= 5"}, {plainPod, func(n int64) bool { return n == 0 }, "0"}} {
		s := newConntrackSampler(c.pod)
		s.start(5 * time.Millisecond)
		time.Sleep(20 * time.Millisecond)
		peak, err := s.stop()
		if err != nil || !c.want(peak) {
			t.Errorf("pod %s: conntrack peak %d (%v), want %s", c.pod.Name, peak, err, c.desc)
		}
	}
}
