package capture

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// TestResolveOwnerGroups: rule 13's list as gids, numbers as given and names through the lookup; the exclude list
// counts only beside include "*", as in istio's rules; an unknown name is an error naming it and its variable.
func TestResolveOwnerGroups(t *testing.T) {
	lookup := func(name string) (uint32, error) {
		if name == "java" {
			return 2500, nil
		}
		return 0, errors.New("unknown group")
	}
	for _, tc := range []struct {
		include, exclude string
		want             OwnerGroups
		bad              string // "" = accepted
	}{
		{"*", "", OwnerGroups{}, ""},
		{"", "", OwnerGroups{Include: true}, ""},
		{"java,202", "", OwnerGroups{Include: true, GIDs: []uint32{2500, 202}}, ""},
		{"java,nosuch", "", OwnerGroups{}, "nosuch"},
		{"*", "888,java", OwnerGroups{GIDs: []uint32{888, 2500}}, ""},
		{"*", "888,ftp", OwnerGroups{}, "ftp"},
		{"202", "ftp", OwnerGroups{Include: true, GIDs: []uint32{202}}, ""},
	} {
		c := Default()
		c.OwnerGroupsInclude, c.OwnerGroupsExclude = tc.include, tc.exclude
		got, err := c.ResolveOwnerGroups(lookup)
		switch {
		case tc.bad == "" && (err != nil || !reflect.DeepEqual(got, tc.want)):
			t.Errorf("%q/%q: %+v, %v; want %+v", tc.include, tc.exclude, got, err, tc.want)
		case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), `"`+tc.bad+`"`)):
			t.Errorf("%q/%q: want an error naming %q, got %v", tc.include, tc.exclude, tc.bad, err)
		}
	}
}

// TestOwnerGroupsLimit: istio's 64-group limit on the include list holds for every backend (Config.Policy).
func TestOwnerGroupsLimit(t *testing.T) {
	c := Default()
	c.OwnerGroupsInclude = strings.Repeat("7,", MaxOwnerGroups)
	if _, err := c.Policy(); err != nil {
		t.Errorf("%d groups: %v", MaxOwnerGroups, err)
	}
	c.OwnerGroupsInclude += "8"
	if _, err := c.Policy(); err == nil || !strings.Contains(err.Error(), EnvOwnerGroups) {
		t.Errorf("%d groups: want an error naming %s, got %v", MaxOwnerGroups+1, EnvOwnerGroups, err)
	}
}

// TestOSGroupLookup: the real /etc/group ("root" is gid 0 on Linux).
func TestOSGroupLookup(t *testing.T) {
	if gid, err := OSGroupLookup("root"); err != nil || gid != 0 {
		t.Errorf("root: %d, %v", gid, err)
	}
	if _, err := OSGroupLookup("mc-no-such-group"); err == nil {
		t.Error("mc-no-such-group: found")
	}
}
