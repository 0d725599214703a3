package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/meshcap/meshcap/pkg/demo"
)

func init() { register(newDemoCmd) }

func newDemoCmd(log *zap.Logger) *cobra.Command {
	var opts demo.Options
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Build a client and a server pod from netns + cgroups, capture both with eBPF, show the two-sidecar path",
		Long: `demo builds two pods (network namespace + cgroup v2 each, joined by a veth), starts HTTP servers in the
server pod, attaches meshcap's eBPF capture (outbound on the client pod's cgroup, inbound on the server pod's
netns), runs a meshcap proxy as the sidecar of each pod (started as root, running as uid 1337), sends requests
from the client pod and prints what happened: app -> client sidecar 15001 -> server sidecar 15006 -> app, an
excluded port going direct, and the proxy's own uid exempt. Everything it made is removed at the end, also on
Ctrl-C, SIGTERM, a closed output pipe or an error. Needs root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return errors.New("demo needs root: it creates network namespaces and cgroups and loads BPF programs")
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find own binary: %w", err)
			}
			opts.Meshcap = self
			if err := throwawayBPFFS(log); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			// A closed stdout (demo | head) must not kill the demo before its cleanup: writes just fail.
			signal.Ignore(syscall.SIGPIPE)
			return demo.Run(ctx, log, cmd.OutOrStdout(), opts)
		},
	}
	cmd.Flags().IntVar(&opts.Requests, "requests", 3, "requests per destination")
	cmd.Flags().DurationVar(&opts.Timeout, "timeout", 60*time.Second, "give up after this long")
	cmd.Flags().BoolVar(&opts.Keep, "keep", false, "leave the pods and capture in place until Ctrl-C (to explore with meshcap status)")
	cmd.AddCommand(newDemoClientCmd())
	return cmd
}

// newDemoClientCmd is the HTTP client the demo runs inside the client pod (it must be a separate process so that
// it lives in the pod's cgroup, where capture applies).
func newDemoClientCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "client URL...",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, urls []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 20*time.Second)
			defer cancel()
			return demo.Client(ctx, cmd.OutOrStdout(), urls)
		},
	}
}
