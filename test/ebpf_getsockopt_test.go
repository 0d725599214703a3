package test

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// TestEBPFGetsockoptLargeAnswer: a process in a captured cgroup reads a legacy iptables table whose answer to
// getsockopt(IPT_SO_GET_ENTRIES) is several pages long (100 rules of about 200 bytes each). The cgroup/getsockopt
// program sees every getsockopt of the cgroup; for answers larger than a page the kernel hands it only the first
// page, and unless the program leaves such an answer alone the caller gets EFAULT or a truncated table.
func TestEBPFGetsockoptLargeAnswer(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("iptables-legacy-restore"); err != nil {
		t.Fatalf("iptables-legacy is needed: %v", err)
	}
	pin := ebPinRoot(t)
	pod := newPod(t, "gso")
	ebAttach(t, pin, pod, "-i", "*")

	const rules = 100
	var in strings.Builder
	in.WriteString("*filter\n:MCBIG - [0:0]\n")
	for i := 0; i < rules; i++ {
		fmt.Fprintf(&in, "-A MCBIG -p tcp -m tcp --dport %d -j ACCEPT\n", 10000+i)
	}
	in.WriteString("COMMIT\n")
	restore := exec.Command("iptables-legacy-restore", "-w")
	restore.Stdin = strings.NewReader(in.String())
	var out bytes.Buffer
	restore.Stdout, restore.Stderr = &out, &out
	if err := pod.Start(restore, nil); err != nil {
		t.Fatal(err)
	}
	if err := restore.Wait(); err != nil {
		t.Fatalf("iptables-legacy-restore in the captured pod: %v\n%s", err, out.String())
	}

	list, err := runIn(t, pod, nil, "iptables-legacy", "-w", "-n", "-L", "MCBIG")
	if err != nil {
		t.Fatalf("iptables-legacy -L in the captured cgroup: %v", err)
	}
	save, err := runIn(t, pod, nil, "iptables-legacy-save", "-t", "filter")
	if err != nil {
		t.Fatalf("iptables-legacy-save in the captured cgroup: %v", err)
	}
	for i := 0; i < rules; i++ {
		if p := fmt.Sprintf("dpt:%d", 10000+i); !strings.Contains(list, p+"\n") && !strings.Contains(list, p+" ") {
			t.Fatalf("iptables -L lacks the rule for port %d (truncated answer?):\n%s", 10000+i, list)
		}
		if r := fmt.Sprintf("-A MCBIG -p tcp -m tcp --dport %d -j ACCEPT\n", 10000+i); !strings.Contains(save, r) {
			t.Fatalf("iptables-save lacks %q:\n%s", r, save)
		}
	}
}
