# meshcap: every target that touches the kernel (demo, test, bench) needs root.
GO      ?= go
BIN     ?= bin/meshcap
CLANG   ?= clang-14
export PATH := $(PATH):/usr/local/go/bin

.PHONY: all build generate check-generate deps test test-kernels demo bench lint clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/meshcap
	$(GO) build -o bin/meshcap-cni ./cmd/meshcap-cni

# Rebuild the committed bpf2go output (loader/*_bpfel.go, *.o) with the pinned Debian clang.
generate:
	BPF_CLANG=$(CLANG) $(GO) generate ./loader/...

# CI: the committed BPF objects must be exactly what the pinned clang produces from bpf/.
check-generate: generate
	git diff --exit-code -- loader/

# The Debian packages the tests need, installed only when missing (apt-get update first); instant otherwise.
deps:
	.ci/deps

# All tests, unit and end to end (real kernel: run as root). -p 1: e2e packages share the machine's 2 cores.
test: deps
	$(GO) vet ./...
	$(GO) test -count=1 -p 1 -timeout 25m ./...

# The kernel matrix: Debian's 5.10, 6.1, 6.12 and 7.2 kernels booted in QEMU (TCG), each running the probe, the
# e2e capture tests, the init --mode auto relay check and the demo; 5.10 once more without cgroup2; then the same
# on the host kernel. Kernels and initramfs parts are cached in /var/cache/meshcap-kernels. KERNELS=6.1,7.2 picks
# some; KERNELS_FLAGS=-kvm uses KVM (it hung at boot on this kind of machine, so TCG is the default).
KERNELS ?= all
test-kernels:
	.ci/deps kernels
	$(GO) run ./test/kernels -kernels $(KERNELS) $(KERNELS_FLAGS)

# The main job on a built-in default: two netns pods, eBPF capture, the meshcap proxy, traffic shown, all removed.
demo: build
	./$(BIN) demo

bench: build
	./$(BIN) bench

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin
