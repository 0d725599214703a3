package hostfs

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNetnsIDs: on a kernel with SO_NETNS_COOKIE the id is the cookie; the stand-in used without it (Linux 5.10)
// is the nsfs inode of the socket's netns, marked so that it is never taken for a cookie.
func TestNetnsIDs(t *testing.T) {
	id, err := OwnNetnsID()
	if err != nil {
		t.Fatal(err)
	}
	cookie, cerr := OwnNetnsCookie()
	switch {
	case cerr == nil && (id != cookie || !IsNetnsCookie(id)):
		t.Errorf("id %#x, cookie %#x: with SO_NETNS_COOKIE the id must be the cookie", id, cookie)
	case cerr != nil && IsNetnsCookie(id):
		t.Errorf("id %#x without SO_NETNS_COOKIE (%v) passes as a cookie", id, cerr)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	inode, err := ofOwnSocket(socketNetnsInodeID)
	if err != nil {
		t.Fatal(err)
	}
	if inode != inodeIDBit|st.Ino || IsNetnsCookie(inode) {
		t.Errorf("stand-in %#x, want the netns inode %d marked", inode, st.Ino)
	}
	f, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, err := NetnsID(f); err != nil || got != id {
		t.Errorf("NetnsID of own netns = %#x (%v), want %#x", got, err, id)
	}
}
