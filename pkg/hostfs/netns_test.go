package hostfs

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNetnsIDs: SO_NETNS_COOKIE read through a socket of the netns equals the one read on the socket itself (or
// both say the kernel has none); the stand-in is the nsfs inode, marked so that it is never taken for a cookie, and
// SIOCGSKNS opens the socket's own netns.
func TestNetnsIDs(t *testing.T) {
	f, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	cookie, err := NetnsCookie(f)
	sockCookie, serr := SocketNetnsCookie(fd)
	switch {
	case err == nil && (serr != nil || sockCookie != cookie || !IsNetnsCookie(cookie)):
		t.Errorf("cookie %#x through the netns, %#x (%v) on a socket", cookie, sockCookie, serr)
	case err != nil && (!errors.Is(err, unix.ENOPROTOOPT) || !errors.Is(serr, unix.ENOPROTOOPT)):
		t.Errorf("no SO_NETNS_COOKIE: %v / %v, want ENOPROTOOPT from both", err, serr)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	inode, err := NetnsInodeID(f)
	if err != nil || inode != inodeIDBit|st.Ino || IsNetnsCookie(inode) {
		t.Errorf("stand-in %#x (%v), want the netns inode %d marked", inode, err, st.Ino)
	}
	ns, err := SocketNetns(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if got, err := NetnsInodeID(ns); err != nil || got != inode {
		t.Errorf("SIOCGSKNS netns: stand-in %#x (%v), want %#x", got, err, inode)
	}
}
