package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshcap/meshcap/pkg/capture"
)

// Enrollment is what ADD records for an enrolled pod: everything the dataplane needs to capture it, and
// everything DEL needs to undo it without the netns.
type Enrollment struct {
	ContainerID string         `json:"containerID"`
	IfName      string         `json:"ifName"`
	Netns       string         `json:"netns"`
	NetnsCookie uint64         `json:"netnsCookie"`
	NetnsInode  uint64         `json:"netnsInode"`
	Pod         Pod            `json:"pod"`
	IPs         []netip.Prefix `json:"ips"`
	Capture     capture.Config `json:"capture"`
	Reason      string         `json:"reason"` // why it was enrolled
	Network     string         `json:"network"`
	Created     time.Time      `json:"created"`
	// Mode is how the pod is captured: ModeEBPF (the agent) or ModeIPTables (the per-pod fallback).
	Mode string `json:"mode,omitempty"`
	// Facts are the pod's host facts read in its netns at ADD (IPv6 enabled, resolv.conf servers), as istio reads
	// them once when it writes its rules: the agent builds the pod's eBPF policy from them (Policy), also when it
	// re-enrolls the pod later. A record of an older meshcap has none (IPv6 was refused then).
	Facts capture.HostFacts `json:"facts"`
}

// Policy is the eBPF policy of the recorded pod: its capture settings completed with its recorded facts.
func (e *Enrollment) Policy() (capture.Policy, error) {
	pol, err := e.Capture.Policy()
	if err != nil {
		return pol, err
	}
	return e.Capture.PodPolicy(pol, e.Facts, capture.OSGroupLookup)
}

// Enroller programs the dataplane for one pod. The record store is separate (Store); an Enroller is the
// agent-mode map writer (config entry keyed by netns cookie). Both methods are idempotent.
type Enroller interface {
	Enroll(e *Enrollment, p capture.Policy) error
	Unenroll(e *Enrollment) error
}

// NopEnroller programs nothing: used when no node agent has published its pins (the agent enrolls the recorded
// pods when it starts).
type NopEnroller struct{}

func (NopEnroller) Enroll(*Enrollment, capture.Policy) error { return nil }
func (NopEnroller) Unenroll(*Enrollment) error               { return nil }

// Store keeps one JSON record per enrolled pod in Dir/<containerID>.json.
type Store struct{ Dir string }

// CNI spec: the container ID is alphanumeric plus '_', '.' and '-'. Also keeps the file name safe.
var containerIDRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`)

// ValidContainerID rejects IDs that are not safe file names.
func ValidContainerID(id string) error {
	if !containerIDRe.MatchString(id) || len(id) > 255 {
		return fmt.Errorf("invalid container ID %q: want letters, digits, '_', '.', '-'", id)
	}
	return nil
}

func (s Store) path(id string) string { return filepath.Join(s.Dir, id+".json") }

// Lock takes an exclusive lock on the store (a flock on its directory, created when missing) and returns its
// release. meshcap-cni (ADD, DEL, GC: one process per call) and the node agent's reconcile loop hold it while they
// change a pod's dataplane entries and its record together, so that none of them acts on a record another one is
// changing (for example the agent re-enrolling a pod that DEL is removing).
func (s Store) Lock() (func(), error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	fd, err := unix.Open(s.Dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("lock state dir %s: %w", s.Dir, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lock state dir %s: %w", s.Dir, err)
	}
	return func() { unix.Close(fd) }, nil
}

// Put writes the record atomically (temp file + rename).
func (s Store) Put(e *Enrollment) error {
	if err := ValidContainerID(e.ContainerID); err != nil {
		return err
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	data, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.Dir, "."+e.ContainerID+".*.tmp")
	if err != nil {
		return fmt.Errorf("write enrollment: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write enrollment: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write enrollment: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write enrollment: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.path(e.ContainerID)); err != nil {
		return fmt.Errorf("write enrollment: %w", err)
	}
	return nil
}

// Get returns the record, or nil and no error when there is none.
func (s Store) Get(id string) (*Enrollment, error) {
	if err := ValidContainerID(id); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(s.path(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read enrollment: %w", err)
	}
	var e Enrollment
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, fmt.Errorf("read enrollment %s: %w", s.path(id), err)
	}
	return &e, nil
}

// Delete removes the record; a missing record is not an error.
func (s Store) Delete(id string) error {
	if err := ValidContainerID(id); err != nil {
		return err
	}
	if err := os.Remove(s.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove enrollment: %w", err)
	}
	return nil
}

// List returns the container IDs with a record, sorted.
func (s Store) List() ([]string, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list enrollments: %w", err)
	}
	var ids []string
	for _, e := range ents {
		name := e.Name()
		if id, ok := strings.CutSuffix(name, ".json"); ok && !strings.HasPrefix(name, ".") && ValidContainerID(id) == nil {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}
