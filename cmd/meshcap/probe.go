package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/meshcap/meshcap/loader"
)

func init() { register(newProbeCmd) }

// probeReport is what `meshcap probe --json` prints.
type probeReport struct {
	Checks   []loader.FeatureCheck `json:"checks"`
	Decision loader.ModeDecision   `json:"decision"`
}

func newProbeCmd(log *zap.Logger) *cobra.Command {
	var (
		asJSON    bool
		inbound   bool
		cgParent  string
		bpffsPath string
	)
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "Check the kernel features eBPF capture needs and print the mode that follows",
		Long: "Checks cgroup v2, bpffs, each BPF program, map and attach type and each helper meshcap uses, with a real\n" +
			"load-and-attach into a temporary cgroup and netns, then prints 'mode: ebpf' or 'mode: iptables (reason)'.\n" +
			loader.ProbeDisableEnv + "=<feature,...> marks features missing (a full check name, or any ':' part of one).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			checks, err := loader.Probe(loader.ProbeOptions{CgroupParent: cgParent, BPFFSPath: bpffsPath})
			if err != nil {
				return fmt.Errorf("probe: %w", err)
			}
			d := loader.DecideMode(checks, loader.ProbeRequirements{Inbound: inbound})
			log.Debug("probe decided", zap.String("mode", d.Mode), zap.String("reason", d.Reason))
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(probeReport{Checks: checks, Decision: d})
			}
			return printProbe(cmd.OutOrStdout(), checks, d)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the checks and the decision as JSON")
	cmd.Flags().BoolVar(&inbound, "inbound", true, "inbound capture is wanted (sk_lookup checks are required)")
	cmd.Flags().StringVar(&cgParent, "cgroup-parent", "", "cgroup v2 dir for the temporary probe cgroup (default: the cgroup2 mount)")
	cmd.Flags().StringVar(&bpffsPath, "bpffs", loader.DefaultBPFFSPath, "bpf filesystem path to check")
	return cmd
}

func printProbe(w io.Writer, checks []loader.FeatureCheck, d loader.ModeDecision) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tSCOPE\tRESULT\tDETAIL")
	for _, c := range checks {
		res := "ok"
		if !c.OK {
			res = "MISSING"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Name, c.Scope, res, c.Detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if _, err := fmt.Fprintf(w, "mode: %s (%s)\n", d.Mode, d.Reason); err != nil || d.Variant == "" {
		return err
	}
	agent := loader.DecideMode(checks, loader.ProbeRequirements{Inbound: true, Agent: true})
	_, err := fmt.Fprintf(w, "program variant: %s\nagent mode: %s (%s)\n", d.Variant, agent.Mode, agent.Reason)
	return err
}
