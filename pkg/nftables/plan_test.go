package nftables

import (
	"strings"
	"testing"
)

func TestPlanCleanupOnly(t *testing.T) {
	want := `add table inet istio-proxy-nat
delete table inet istio-proxy-nat
add table inet istio-proxy-mangle
delete table inet istio-proxy-mangle
add table inet istio-proxy-raw
delete table inet istio-proxy-raw
`
	if got := Plan(nil, PlanOptions{CleanupOnly: true}).String(); got != want {
		t.Fatalf("cleanup transaction:\n%s", got)
	}
	// The rules do not matter to a cleanup.
	if got := Plan(build(t, "-i", "*"), PlanOptions{CleanupOnly: true, Reconcile: true}).String(); got != want {
		t.Fatalf("cleanup transaction with rules:\n%s", got)
	}
}

func TestPlanReconcile(t *testing.T) {
	rs := build(t, "-i", "*")
	plain := Plan(rs, PlanOptions{}).String()
	got := Plan(rs, PlanOptions{Reconcile: true}).String()
	want := "add table inet istio-proxy-nat\ndelete table inet istio-proxy-nat\n" + plain +
		"add table inet istio-proxy-mangle\ndelete table inet istio-proxy-mangle\n" +
		"add table inet istio-proxy-raw\ndelete table inet istio-proxy-raw\n"
	if got != want {
		t.Fatalf("reconcile transaction:\n%s\nwant:\n%s", got, want)
	}
	if strings.Contains(plain, "delete") {
		t.Fatalf("default transaction deletes something:\n%s", plain)
	}
}

// TestValidateRefuses: values that nft would reject at apply time (or accept with another meaning) are refused
// before anything runs, and the error names the value.
func TestValidateRefuses(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		bad  string
	}{
		{[]string{"-b", "80x"}, nil, "80x"},
		{[]string{"-b", "80-90"}, nil, "80-90"},
		{[]string{"-b", "1-65535"}, nil, "1-65535"},
		{[]string{"-b", "http"}, nil, "http"},
		{[]string{"-b", "*", "-d", "15090,99999"}, nil, "99999"},
		{[]string{"-o", "3306x"}, nil, "3306x"},
		{[]string{"-q", "ssh"}, nil, "ssh"},
		{[]string{"-e", "15008x"}, nil, "15008x"},
		{[]string{"-p", "99999"}, nil, "99999"},
		{[]string{"-p", "0"}, nil, "0"},
		{[]string{"-i", "*", "-x", "*"}, nil, "*"},
		{[]string{"-i", "10.0.0.0/33"}, nil, "10.0.0.0/33"},
		{[]string{"-i", "10.0.0.1"}, nil, "10.0.0.1"},
		{[]string{"-x", "fe80::/129"}, nil, "fe80::/129"},
		{[]string{"-u", "nosuchuser"}, nil, "nosuchuser"},
		{[]string{"-u", "root"}, nil, "root"},
		{[]string{"-g", "wheel"}, nil, "wheel"},
		{[]string{"-c", "eth+"}, nil, "eth+"},
		{[]string{"-c", "*"}, nil, "*"},
		{[]string{"-k", "eth0;drop"}, nil, "eth0;drop"},
		{[]string{"-t", "x"}, nil, "x"},
		{nil, map[string]string{"ISTIO_OUTBOUND_OWNER_GROUPS": "java,{drop}"}, "{drop}"},
		{nil, map[string]string{"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "10.0.0.1/32"}, "10.0.0.1/32"},
	} {
		_, err := Validate(parseArgs(t, tc.args, tc.env))
		if err == nil {
			t.Errorf("%v %v: accepted", tc.args, tc.env)
			continue
		}
		if !strings.Contains(err.Error(), `"`+tc.bad+`"`) {
			t.Errorf("%v: error does not name %q: %v", tc.args, tc.bad, err)
		}
	}
}
