package loader

// The inbound (sk_lookup) object has its own generate line so that it builds, loads and regenerates independently
// of the outbound objects (gen.go). Same pinned toolchain: clang-14; CI regenerates and checks `git diff --exit-code`.

//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -type inb_config inbound ../bpf/sk_lookup.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
