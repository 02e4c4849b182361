# godwit: a VMM on /dev/kvm. `make demo` boots a Linux guest; `make test` runs the tests.
SHELL := /bin/bash
GO ?= go
export PATH := /usr/local/go/bin:$(PATH)
BIN := $(CURDIR)/bin
NESTED := $(BIN)/godwit-nested
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)

# Packages whose tests boot Linux guests: they need fast KVM, so on a host
# whose /dev/kvm is slow (PVM) or missing they run inside the nested harness.
# The daemon's tests run VMs in the godwit binary GODWIT_TEST_GODWIT names
# (bin/godwit, from build) rather than build one inside L1.
LINUX_PKGS := ./vmm/ ./cmd/godwit/ ./daemon/
NESTED_ENV := GODWIT_TEST_GODWIT=$(BIN)/godwit

.PHONY: all build test test-unit test-linux test-linux-long test-linux-soak demo bench bench-boot bench-disk bench-io bench-usernet bench-snapshot bench-migrate bench-daemon bench-daemon-latency fmt vet clean

all: build

# godwit is linked statically (CGO_ENABLED=0: the pure-Go DNS resolver and
# os/user): no ld.so or libc to load saves ~1.4 ms of every exec and 1.4 MiB
# of RSS (bench/boot/RESULTS.md, "Setup time and footprint").
build:
	CGO_ENABLED=0 $(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/godwit ./cmd/godwit
	$(GO) build -o $(NESTED) ./cmd/godwit-nested

# test: unit tests, tiny guests on /dev/kvm, then the Linux-guest tests
# (directly where KVM is fast, in the nested harness elsewhere).
test: build vet test-unit test-linux

test-unit:
	$(GO) test -count=1 -timeout 20m ./...

test-linux: build
	@if $(NESTED) -check-fast >/dev/null 2>&1; then \
		echo "make: /dev/kvm is fast: the Linux-guest tests ran directly in test-unit"; \
	else \
		echo "make: /dev/kvm is slow or absent: running the Linux-guest tests in the nested harness"; \
		$(NESTED_ENV) GO=$(GO) scripts/test-linux.sh "$(NESTED)" $(LINUX_PKGS); \
	fi

# test-linux-long adds the Linux-guest migration tests (a TCP stream during
# migration, a killed destination, auto-converge, post-copy, disk
# migration) to the nested pass; see vmm/migrate_linux_test.go.
test-linux-long: build
	$(NESTED_ENV) GODWIT_LONG_MIGRATION_TESTS=1 $(GO) test -p 1 -count=1 -timeout 40m -exec "$(NESTED)" -run 'Linux' $(LINUX_PKGS)

# test-linux-soak: a diagnostic for the open migration bug (a Linux
# guest under dirty-log rounds and throttling for GODWIT_DIRTY_SOAK seconds
# per variant; vmm/dirtysoak_linux_test.go).
test-linux-soak: build
	GODWIT_DIRTY_SOAK=$${GODWIT_DIRTY_SOAK:-60} $(GO) test -count=1 -timeout 40m -exec "$(NESTED)" -run 'TestLinuxDirtyLogSoak' -v ./vmm

demo: build
	@./scripts/demo.sh

bench: bench-boot bench-io bench-usernet bench-disk bench-snapshot bench-migrate bench-daemon

bench-boot: build
	@./scripts/bench-boot.sh

bench-io: build
	@./scripts/bench-io.sh -runs 5

bench-usernet: build
	@./scripts/bench-usernet.sh

bench-snapshot: build
	@./scripts/bench-snapshot.sh

# Daemon start latency against godwit run, and godwitd's memory with 30
# VMs (bench/daemonlat/RESULTS.md); part of bench-daemon.
bench-daemon-latency: build
	@./scripts/bench-daemon-latency.sh

bench-migrate: build
	@./scripts/bench-migrate.sh

# Export/import throughput (bench/daemon), then the daemon's start latency
# and memory (bench/daemonlat).
bench-daemon: bench-daemon-latency
	@./scripts/bench-daemon.sh

bench-disk:
	$(GO) test -count=1 -tags diskbench -run TestBenchDisk -v ./disk

fmt:
	gofmt -l -w .

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l . | tee /dev/stderr)" || { echo "gofmt needed"; exit 1; }

clean:
	rm -rf $(BIN)
