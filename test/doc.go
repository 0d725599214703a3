// Package test holds meshcap's end-to-end tests. They run as root against the real kernel: every test builds its
// own pods (network namespace + cgroup v2 directory) with pkg/podnet, drives the real meshcap binary, and removes
// everything it made in t.Cleanup, also when it fails. Outside CI a non-root run skips them; in CI (CI=true) a
// skip is a failure.
package test
