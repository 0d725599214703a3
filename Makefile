# meshcap: every target that touches the kernel (demo, test, bench) needs root.
GO      ?= go
BIN     ?= bin/meshcap
CLANG   ?= clang-14
export PATH := $(PATH):/usr/local/go/bin

.PHONY: all build generate check-generate test demo bench lint clean

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

# All tests, unit and end to end (real kernel: run as root). -p 1: e2e packages share the machine's 2 cores.
test:
	$(GO) vet ./...
	$(GO) test -count=1 -p 1 -timeout 25m ./...

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
