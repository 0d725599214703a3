// Command kernels is the kernel matrix (`make test-kernels`): it fetches Debian's own kernel packages with a
// private apt state, builds an initramfs (busybox, iproute2, iptables, the kernel's network modules, static
// meshcap and e2e test binaries), boots each kernel in QEMU and runs inside it `meshcap probe`, the selected
// end-to-end tests, the `init --mode auto` relay check and `meshcap demo`; one kernel also boots without cgroup2.
// The same selection runs on the host kernel directly. It prints a table and exits 1 on any failure.
//
// `kernels guest` is the part that runs inside each VM (started by the initramfs's /init) and on the host.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshcap/meshcap/test/kernels/matrix"
)

// The e2e tests run on every kernel: outbound, inbound two-sidecar, the iptables fallback, agent + CNI, a captured
// cgroup reading a getsockopt answer larger than a page, an unmodified HAProxy sidecar, init's one-mode guarantee
// and validation, capture under ip netns exec, and the capture flag table on every backend (TestCaptureTable, whose
// sidecar listens before capture is attached: on 5.10 its accepted sockets' netns cookie comes from sockops's BTF
// read). `-tests all` runs every test of the binary but skipTests (about 400 s a kernel under TCG: too long for CI).
const defaultTests = "TestEBPFOutboundProxy,TestEBPFOrigdstTool,TestInboundTwoSidecar,TestProxyIptablesOutbound," +
	"TestProxyIptablesInbound,TestDeployInitAutoChoosesEBPF,TestDeployInitAutoFallsBackToIPTables,TestDeployAgentCNI," +
	"TestDeployCNIChainedEnrollment,TestEBPFGetsockoptLargeAnswer,TestSidecarHAProxyPerPod," +
	"TestInitAutoReRunLeavesOneMode,TestRunValidation,TestIPNetnsExec,TestInitUnderIPNetnsExec,TestNftablesProxyOutbound," +
	"TestCaptureTable,TestEBPFIPv6Outbound,TestEBPFIPv6Inbound,TestDNSRedirectEBPF,TestSameSourcePortManyDestinations"

// skipTests take too long under TCG for CI: TestEBPFMapsBounded fills every map to its bound (141 s on 6.1 in
// a VM, most of a kernel's budget); it runs on the host kernel in `make test`.
const skipTests = "TestEBPFMapsBounded"

type options struct {
	kernels, tests, skip, cache, lock, noCgroup2 string
	kvm, host, verbose                           bool
	timeout                                      time.Duration
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "guest" {
		os.Exit(guestMain(os.Args[2:]))
	}
	var o options
	flag.StringVar(&o.kernels, "kernels", "all", "kernels to boot, comma-separated ("+names()+"), or all, or none")
	flag.StringVar(&o.tests, "tests", defaultTests, "e2e tests to run on each kernel (top-level names, comma-separated), or all")
	flag.StringVar(&o.skip, "skip", skipTests, "with -tests all: tests not to run (comma-separated)")
	flag.StringVar(&o.cache, "cache", "/var/cache/meshcap-kernels", "downloads, unpacked kernels and initramfs parts")
	flag.StringVar(&o.lock, "lock", "/tmp/meshcap-e2e.lock", "lock file held while a VM or the host run uses the machine")
	flag.StringVar(&o.noCgroup2, "no-cgroup2", "5.10", "kernel that also boots without cgroup2 (empty: none)")
	flag.BoolVar(&o.kvm, "kvm", false, "use KVM instead of TCG")
	flag.BoolVar(&o.host, "host", true, "also run the selection on the host kernel, outside a VM")
	flag.BoolVar(&o.verbose, "v", false, "copy every console to stdout")
	flag.DurationVar(&o.timeout, "timeout", 12*time.Minute, "time limit of one VM")
	flag.Parse()
	sums, err := run(o)
	if len(sums) > 0 {
		fmt.Print("\n" + matrix.Table(sums))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "test-kernels:", err)
		os.Exit(1)
	}
	for _, s := range sums {
		if !s.OK() {
			os.Exit(1)
		}
	}
}

func names() string {
	var n []string
	for _, k := range matrix.Kernels {
		n = append(n, k.Name)
	}
	return strings.Join(n, ",")
}

// run builds everything, boots each kernel in turn, runs the host, and returns one summary per run.
func run(o options) ([]matrix.Summary, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("needs root (the host run creates netns and cgroups and loads BPF)")
	}
	if _, err := os.Stat("go.mod"); err != nil {
		return nil, fmt.Errorf("run from the module root: %w", err)
	}
	var kernels []matrix.Kernel
	if o.kernels != "none" {
		var err error
		if kernels, err = matrix.SelectKernels(o.kernels); err != nil {
			return nil, err
		}
	}
	// Each run has a directory of its own (concurrent runs share only the downloads and the module archives);
	// its consoles stay, the rest is removed at the end.
	logs, err := newRunDir(filepath.Join(o.cache, "runs"))
	if err != nil {
		return nil, err
	}
	work := filepath.Join(logs, "work")
	defer os.RemoveAll(work)
	step := stepper()
	step("consoles and logs in " + logs)
	bins := filepath.Join(work, "bin")
	step("build static binaries")
	if err := buildBins(o.cache, bins); err != nil {
		return nil, err
	}
	cfg := guestConfig{Tests: strings.Split(o.tests, ","), Skip: strings.Split(o.skip, ",")}
	r := &runner{o: o, work: work, logs: logs, modCache: filepath.Join(o.cache, "initramfs"), step: step}
	if len(kernels) > 0 {
		step("build the initramfs")
		common, err := buildCommon(work, bins, cfg)
		if err != nil {
			return nil, err
		}
		r.common = common
	}
	mirror := machineMirror()
	var sums []matrix.Summary
	for _, k := range kernels {
		step("fetch kernel " + k.Name + " (" + k.Suite + ", " + mirror + ")")
		tree, err := fetchKernel(o.cache, mirror, k)
		if err != nil {
			return sums, err
		}
		sums = append(sums, r.bootKernel(k.Name, k.WantMode, tree, nil))
		if k.Name == o.noCgroup2 {
			sums = append(sums, r.bootKernel(k.Name+" no-cgroup2", "iptables", tree, []string{"MATRIX_CGROUP=v1"}))
		}
	}
	if o.host {
		sums = append(sums, r.hostRun(bins, cfg))
	}
	return sums, nil
}

// newRunDir makes a fresh directory for this run's logs and scratch files under dir, and removes runs older
// than a week.
func newRunDir(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	old, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, d := range old {
		if fi, err := os.Stat(d); err == nil && time.Since(fi.ModTime()) > 7*24*time.Hour {
			os.RemoveAll(d)
		}
	}
	run, err := os.MkdirTemp(dir, time.Now().UTC().Format("20060102T150405")+"-")
	if err != nil {
		return "", err
	}
	return run, os.Chmod(run, 0o755)
}

// machineMirror is the Debian mirror of the machine's own apt sources (read only).
func machineMirror() string {
	var text strings.Builder
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	for _, f := range append([]string{"/etc/apt/sources.list"}, files...) {
		data, _ := os.ReadFile(f)
		text.Write(data)
		text.WriteString("\n")
	}
	return matrix.DebianMirror(text.String())
}

// stepper prints progress with the elapsed time.
func stepper() func(string) {
	start := time.Now()
	return func(s string) { fmt.Printf("[%5.0fs] %s\n", time.Since(start).Seconds(), s) }
}
