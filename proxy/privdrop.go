package proxy

import (
	"fmt"
	"os"
	"syscall"
)

// DropPrivileges switches the whole process (all threads, Go >= 1.16) to uid/gid with no supplementary
// groups: setgroups([]), setgid, setuid. Call it after Listen. It verifies the result.
func DropPrivileges(uid, gid int) error {
	if uid < 0 || gid < 0 {
		return fmt.Errorf("drop privileges: invalid uid/gid %d/%d", uid, gid)
	}
	if err := syscall.Setgroups([]int{}); err != nil {
		return fmt.Errorf("drop privileges: setgroups([]): %w", err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("drop privileges: setgid(%d): %w", gid, err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("drop privileges: setuid(%d): %w", uid, err)
	}
	if os.Getuid() != uid || os.Geteuid() != uid || os.Getgid() != gid || os.Getegid() != gid {
		return fmt.Errorf("drop privileges: still uid %d euid %d gid %d egid %d after switching to %d/%d",
			os.Getuid(), os.Geteuid(), os.Getgid(), os.Getegid(), uid, gid)
	}
	if uid != 0 && syscall.Setuid(0) == nil {
		return fmt.Errorf("drop privileges: setuid(0) still succeeds after switching to uid %d", uid)
	}
	return nil
}
