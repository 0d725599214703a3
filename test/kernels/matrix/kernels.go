// Package matrix is the pure logic of the kernel matrix (`make test-kernels`): which Debian kernel packages make
// up each kernel of the matrix, the result markers a run prints on its console, the parsing of `go test -v` output
// and the summary table. Nothing here touches the machine.
//
// Invariants: a run's verdict comes only from markers it printed (a run that printed no "done" marker failed);
// a skipped test counts as failed (a VM has every tool a test needs, so a skip hides a missing check).
package matrix

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Kernel is one kernel of the matrix: Debian packages from one suite.
type Kernel struct {
	Name  string // short name: "5.10"
	Suite string // Debian suite that ships it
	// Image matches the package holding /boot/vmlinuz-*; its first group is the version part shared with Extra.
	Image *regexp.Regexp
	// Extra are further packages, "%s" replaced by the version part Image matched (the modules on 7.2).
	Extra []string
	// WantMode is the capture mode the probe must choose on this kernel.
	WantMode string
}

// Kernels are Debian's kernels of the matrix, oldest first.
var Kernels = []Kernel{
	{Name: "5.10", Suite: "bullseye", Image: regexp.MustCompile(`^linux-image-(5\.10\.0-[0-9]+)-amd64$`), WantMode: "ebpf"},
	{Name: "6.1", Suite: "bookworm", Image: regexp.MustCompile(`^linux-image-(6\.1\.0-[0-9]+)-amd64-unsigned$`), WantMode: "ebpf"},
	{Name: "6.12", Suite: "trixie", Image: regexp.MustCompile(`^linux-image-(6\.12\.[0-9]+)\+deb13-amd64-unsigned$`), WantMode: "ebpf"},
	{Name: "7.2", Suite: "sid", Image: regexp.MustCompile(`^linux-binary-(7\.2\.[0-9]+)\+deb14-amd64$`),
		Extra: []string{"linux-modules-%s+deb14-amd64"}, WantMode: "ebpf"},
}

// SelectKernels returns the kernels named in the comma-separated list ("all" or "" = every kernel).
func SelectKernels(list string) ([]Kernel, error) {
	if list == "" || list == "all" {
		return Kernels, nil
	}
	var out []Kernel
	for _, name := range strings.Split(list, ",") {
		i := slices.IndexFunc(Kernels, func(k Kernel) bool { return k.Name == strings.TrimSpace(name) })
		if i < 0 {
			return nil, fmt.Errorf("unknown kernel %q (known: %s)", name, kernelNames())
		}
		out = append(out, Kernels[i])
	}
	return out, nil
}

func kernelNames() string {
	var n []string
	for _, k := range Kernels {
		n = append(n, k.Name)
	}
	return strings.Join(n, ", ")
}

// Packages picks, among the package names a suite offers, the newest that matches k.Image, and returns it with
// its Extra packages.
func (k Kernel) Packages(names []string) ([]string, error) {
	best, bestVer := "", ""
	for _, n := range names {
		m := k.Image.FindStringSubmatch(n)
		if m == nil {
			continue
		}
		if best == "" || versionLess(bestVer, m[1]) {
			best, bestVer = n, m[1]
		}
	}
	if best == "" {
		return nil, fmt.Errorf("kernel %s: no package in %s matches %s", k.Name, k.Suite, k.Image)
	}
	pkgs := []string{best}
	for _, e := range k.Extra {
		pkgs = append(pkgs, fmt.Sprintf(e, bestVer))
	}
	return pkgs, nil
}

// versionLess compares dotted/dashed numeric versions ("5.10.0-9" < "5.10.0-32").
func versionLess(a, b string) bool {
	split := func(s string) []string {
		return strings.FieldsFunc(s, func(r rune) bool { return r == '.' || r == '-' })
	}
	pa, pb := split(a), split(b)
	for i := 0; i < len(pa) && i < len(pb); i++ {
		na, ea := strconv.Atoi(pa[i])
		nb, eb := strconv.Atoi(pb[i])
		if ea != nil || eb != nil {
			if pa[i] != pb[i] {
				return pa[i] < pb[i]
			}
			continue
		}
		if na != nb {
			return na < nb
		}
	}
	return len(pa) < len(pb)
}
