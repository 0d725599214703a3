package hostfs

import "testing"

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b\134c\0`:     `/a b\c\0`,
		`/sys/fs/cgroup`:     `/sys/fs/cgroup`,
		`/x\011y`:            "/x\ty",
		`/trailing\04`:       `/trailing\04`,
		`/not\0a8octal\999z`: `/not\0a8octal\999z`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCgroup2Root(t *testing.T) {
	root, err := Cgroup2Root()
	if err != nil {
		t.Skipf("no cgroup2 here: %v", err)
	}
	if !IsCgroup2(root) {
		t.Fatalf("Cgroup2Root() = %s, which is not a cgroup2 filesystem", root)
	}
}
