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

func init() { register(newStatusCmd) }

func newStatusCmd(_ *zap.Logger) *cobra.Command {
	var pinRoot string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the capture mode, attached cgroups with their programs, and pinned maps with entry counts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := loader.GetStatus(pinRoot)
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(struct {
					Mode string `json:"mode"`
					*loader.Status
				}{statusMode(st), st})
			}
			printStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	cmd.Flags().StringVar(&pinRoot, "pin-dir", loader.DefaultPinRoot, "bpffs directory where links and maps are pinned")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func statusMode(st *loader.Status) string {
	if len(st.Attachments) == 0 {
		return "none"
	}
	return "ebpf"
}

func printStatus(w io.Writer, st *loader.Status) {
	fmt.Fprintf(w, "mode: %s (pin dir %s, %d cgroup(s) attached)\n", statusMode(st), st.PinRoot, len(st.Attachments))
	for _, a := range st.Attachments {
		path := a.CgroupPath
		if path == "" {
			path = "(cgroup gone; `meshcap ebpf detach` cleans up)"
		}
		fmt.Fprintf(w, "\ncgroup %s (id %d), proxy port %d, pins %s\n", path, a.CgroupID, a.ProxyPort, a.PinDir)
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  PROGRAM\tLINK\tPROG\tSTATE")
		for _, p := range a.Programs {
			state := "attached"
			switch {
			case p.Err != "":
				state = "error: " + p.Err
			case p.CgroupID != a.CgroupID:
				state = fmt.Sprintf("attached to cgroup id %d", p.CgroupID)
			}
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%s\n", p.Hook, p.LinkID, p.ProgID, state)
		}
		fmt.Fprintln(tw, "  MAP\tTYPE\tENTRIES\tMAX")
		for _, m := range a.Maps {
			if m.Err != "" {
				fmt.Fprintf(tw, "  %s\t-\t-\terror: %s\n", m.Name, m.Err)
				continue
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\n", m.Name, m.Type, m.Entries, m.MaxEntries)
		}
		tw.Flush()
	}
}
