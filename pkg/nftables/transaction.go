package nftables

import (
	"sigs.k8s.io/knftables"
)

// chainSpec declares one chain of an istio table, in istio's declaration order (CASES.md section A).
type chainSpec struct {
	name     string
	typ      knftables.BaseChainType // "" for a regular chain
	hook     knftables.BaseChainHook
	priority knftables.BaseChainPriority
}

var tableChains = map[string][]chainSpec{
	TableNat: {
		{chainPrerouting, knftables.NATType, knftables.PreroutingHook, knftables.DNATPriority},
		{chainOutput, knftables.NATType, knftables.OutputHook, knftables.DNATPriority},
		{name: chainInbound}, {name: chainRedirect}, {name: chainInRedirect}, {name: chainOutputX}, {name: chainOutputDNS},
	},
	TableMangle: {
		{chainPrerouting, knftables.FilterType, knftables.PreroutingHook, knftables.ManglePriority},
		{chainOutput, knftables.RouteType, knftables.OutputHook, knftables.ManglePriority},
		{name: chainDivert}, {name: chainTProxy}, {name: chainInbound}, {name: chainDrop},
	},
	TableRaw: {
		{chainPrerouting, knftables.FilterType, knftables.PreroutingHook, knftables.RawPriority},
		{chainOutput, knftables.FilterType, knftables.OutputHook, knftables.RawPriority},
		{name: chainInbound}, {name: chainOutputDNS},
	},
}

func (s chainSpec) chain(table string) *knftables.Chain {
	c := &knftables.Chain{Name: s.name, Table: table, Family: knftables.InetFamily}
	if s.typ != "" {
		c.Type, c.Hook, c.Priority = knftables.PtrTo(s.typ), knftables.PtrTo(s.hook), knftables.PtrTo(s.priority)
	}
	return c
}

// PlanOptions select the transaction: the rules (default), cleanup only, or the rules plus the removal of the istio
// tables they do not use.
type PlanOptions struct {
	CleanupOnly bool // delete the three istio tables, add nothing (rs may be nil)
	Reconcile   bool // start from no istio table: also remove tables and chains left by an earlier run that rs does not use
}

// Plan returns the one transaction that the apply step hands to `nft -f -`. Without options its text
// (Transaction.String) is byte-identical to istio-iptables --native-nftables.
func Plan(rs *Ruleset, o PlanOptions) *knftables.Transaction {
	// A family-less context: every object names its family and table, as in istio (knftables.New("", "")).
	tx := knftables.NewFake("", "").NewTransaction()
	for _, t := range Tables {
		// Cleanup deletes every table; reconcile deletes it too and then writes it again when rs uses it, so that
		// neither a table nor a chain left by an earlier configuration survives (a flush keeps chains).
		if o.CleanupOnly || o.Reconcile {
			deleteTable(tx, t)
		}
		if !o.CleanupOnly {
			addTable(tx, t, rs.tableRules(t))
		}
	}
	return tx
}

// deleteTable removes a table whether or not it exists: `add` first so that `delete` cannot fail on a missing table.
func deleteTable(tx *knftables.Transaction, name string) {
	tx.Add(&knftables.Table{Name: name, Family: knftables.InetFamily})
	tx.Delete(&knftables.Table{Name: name, Family: knftables.InetFamily})
}

func (rs *Ruleset) tableRules(table string) []Rule {
	var out []Rule
	for _, r := range rs.Rules {
		if r.Table == table {
			out = append(out, r)
		}
	}
	return out
}

// addTable writes one table as istio does: nothing without rules; else add + flush table, the chains that have
// rules (declaration order), then the rules. An insert stays an insert only if its chain already has more than
// Index rules in this transaction; otherwise it becomes an add.
func addTable(tx *knftables.Transaction, table string, rules []Rule) {
	count := map[string]int{}
	for _, r := range rules {
		count[r.Chain]++
	}
	var chains []chainSpec
	for _, s := range tableChains[table] {
		if count[s.name] > 0 {
			chains = append(chains, s)
		}
	}
	if len(chains) == 0 {
		return
	}
	tx.Add(&knftables.Table{Name: table, Family: knftables.InetFamily})
	tx.Flush(&knftables.Table{Name: table, Family: knftables.InetFamily})
	for _, s := range chains {
		tx.Add(s.chain(table))
	}
	seen := map[string]int{}
	for _, r := range rules {
		kr := &knftables.Rule{Chain: r.Chain, Table: table, Family: knftables.InetFamily, Rule: knftables.Concat(r.Words)}
		if r.Index != nil && *r.Index < seen[r.Chain] {
			kr.Index = knftables.PtrTo(*r.Index)
			tx.Insert(kr)
		} else {
			tx.Add(kr)
		}
		seen[r.Chain]++
	}
}
