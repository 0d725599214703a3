package proxy

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestSnapshotJSON(t *testing.T) {
	var s Stats
	s.Outbound.Accepted.Add(3)
	s.Outbound.Active.Add(1)
	s.Inbound.BytesUp.Add(10)
	s.Errors.Loop.Add(2)
	snap := s.Snapshot()
	b, err := json.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["outbound"]["accepted"] != 3.0 || m["outbound"]["active"] != 1.0 || m["inbound"]["bytes_up"] != 10.0 ||
		m["errors"]["loop"] != 2.0 {
		t.Fatalf("unexpected JSON %s", b)
	}
	if s.Snapshot() != snap {
		t.Fatal("unchanged counters give a different snapshot")
	}
	s.Errors.Dial.Add(1)
	if s.Snapshot() == snap {
		t.Fatal("changed counters give the same snapshot")
	}
}

func TestWriteStatsFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "stats.json")
	var s Stats
	s.Inbound.Relayed.Add(7)
	if err := WriteStatsFile(path, s.Snapshot()); err != nil {
		t.Fatal(err)
	}
	var got Snapshot
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &got); err != nil || got.Inbound.Relayed != 7 {
		t.Fatalf("stats file %q: %v", b, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
	if err := WriteStatsFile(filepath.Join(dir, "missing", "x.json"), got); err == nil {
		t.Fatal("no error for a missing directory")
	}
}

func TestStatsWriterOnlyOnChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats.json")
	var s Stats
	w := newStatsWriter(path, 10*time.Millisecond, &s, zap.NewNop())
	if err := w.write(); err != nil {
		t.Fatal(err)
	}
	go w.run()
	st1, _ := os.Stat(path)
	time.Sleep(60 * time.Millisecond)
	st2, _ := os.Stat(path)
	if !os.SameFile(st1, st2) {
		t.Error("file rewritten although nothing changed")
	}
	s.Outbound.BytesDown.Add(42)
	deadline := time.Now().Add(2 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		var got Snapshot
		if json.Unmarshal(b, &got) == nil && got.Outbound.BytesDown == 42 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats file not updated: %s", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.Errors.Relay.Add(1)
	if err := w.stop(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	var got Snapshot
	if err := json.Unmarshal(b, &got); err != nil || got.Errors.Relay != 1 {
		t.Fatalf("final write missing: %s", b)
	}
}

func TestParseCopyMode(t *testing.T) {
	for s, want := range map[string]CopyMode{"splice": CopySplice, "buffer": CopyBuffer} {
		if m, err := ParseCopyMode(s); err != nil || m != want || m.String() != s {
			t.Errorf("ParseCopyMode(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParseCopyMode("zerocopy"); err == nil {
		t.Error("no error for zerocopy")
	}
}

func TestValidate(t *testing.T) {
	ok := Config{OutboundAddr: DefaultOutboundAddr, InboundAddr: DefaultInboundAddr}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]Config{
		"none":      {},
		"bad addr":  {OutboundAddr: "localhost:15001"},
		"same addr": {OutboundAddr: "127.0.0.1:15001", InboundAddr: "127.0.0.1:15001"},
		"v6 source": {OutboundAddr: "127.0.0.1:15001", InboundSource: netip.MustParseAddr("::6")},
		"neg dial":  {OutboundAddr: "127.0.0.1:15001", DialTimeout: -1},
		"bad admin": {OutboundAddr: "127.0.0.1:15001", AdminAddr: ":x"},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
