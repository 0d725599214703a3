// Command meshcap is the CLI: thin wiring of the loader, iptables, proxy and demo packages.
// Each subcommand lives in its own file and registers itself with register(); only main exits.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// commandFactory builds one subcommand; the logger is shared by all of them.
type commandFactory func(log *zap.Logger) *cobra.Command

var factories []commandFactory

// register adds a subcommand; called from init() in each subcommand file.
func register(f commandFactory) { factories = append(factories, f) }

func newRootCmd(log *zap.Logger, level zap.AtomicLevel) *cobra.Command {
	var logLevel string
	root := &cobra.Command{
		Use:           "meshcap",
		Short:         "eBPF traffic capture for service-mesh sidecars, with an istio-exact iptables fallback",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("invalid --log-level %q: %w", logLevel, err)
			}
			return nil
		},
	}
	root.PersistentFlags().StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	for _, f := range factories {
		root.AddCommand(f(log))
	}
	return root
}

func newLogger() (*zap.Logger, zap.AtomicLevel, error) {
	level := zap.NewAtomicLevelAt(zapcore.InfoLevel)
	cfg := zap.NewProductionConfig()
	cfg.Level = level
	cfg.Encoding = "console"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.DisableStacktrace = true
	cfg.DisableCaller = true
	log, err := cfg.Build()
	return log, level, err
}

func main() {
	log, level, err := newLogger()
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshcap: build logger:", err)
		os.Exit(1)
	}
	defer func() { _ = log.Sync() }()
	if err := newRootCmd(log, level).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "meshcap:", err)
		log.Sync()
		os.Exit(exitCode(err))
	}
}
