package loader

import (
	"os"
	"testing"
)

// TestMain turns the test binary into a helper child process when a test re-executes it inside a cgroup or netns
// (the child must be a separate process: a socket's cgroup is its creating process's); otherwise it runs the tests.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		outboundChildMain()
	}
	if os.Getenv(fpChildEnv) != "" {
		fastPathChildMain()
	}
	if mode := os.Getenv(inbChildEnv); mode != "" {
		inboundChildMain(mode)
	}
	os.Exit(m.Run())
}
