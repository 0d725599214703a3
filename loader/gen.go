package loader

// The BPF objects are generated and committed, so that `go build` and `go test` need no clang. Regenerate with
// `go generate ./loader` (clang-14 pinned: CI regenerates and diffs). Each hook is its own object; the loader makes
// them share one instance of every map. Only connect4 emits the Go types of the shared structs (mc_*). A new hook
// is its C file, its line here and one entry in hookTable (hooks.go): see docs/hooks.md.

//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader connect4 ../bpf/connect4.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -no-global-types connect6 ../bpf/connect6.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -no-global-types getpeername6 ../bpf/getpeername6.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -no-global-types sockops ../bpf/sockops.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -no-global-types -type mc_origdst_ext -type mc_stats_answer getsockopt ../bpf/getsockopt.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -no-global-types getpeername4 ../bpf/getpeername4.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -no-global-types sockrelease ../bpf/sockrelease.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -no-global-types sockcreate ../bpf/sockcreate.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -no-global-types fastpath ../bpf/fastpath.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
// DNS capture (bpf/include/dns.h).
//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -no-global-types sendmsg4 ../bpf/sendmsg4.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -no-global-types sendmsg6 ../bpf/sendmsg6.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -no-global-types recvmsg4 ../bpf/recvmsg4.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -cc clang-14 -target bpfel -go-package loader -no-global-types recvmsg6 ../bpf/recvmsg6.c -- -O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu
