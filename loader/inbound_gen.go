package loader

// The inbound objects have their own generate lines so that they build, load and regenerate independently of the
// outbound objects (gen.go). Same pinned toolchain: clang-14; CI regenerates and checks `git diff --exit-code`.
// One object per hook; the loader makes the objects of one netns share one instance of every map. Only the
// sk_lookup object emits the Go types of the shared structs (inb_*). Each program is one entry of hookTable
// (hooks.go, sideInbound).

//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -type inb_config -type inb_tuple inbound ../bpf/sk_lookup.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -no-global-types inboundBind ../bpf/inbound_bind.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -no-global-types inboundSockops ../bpf/inbound_sockops.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -no-global-types inboundGetsockopt ../bpf/inbound_getsockopt.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
