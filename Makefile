# ember: `make` builds build/ember; `make demo` boots the demo guest;
# `make test` runs every test. See README.md.

CC      ?= cc
# make SECCOMP_LEARN=1: a build whose seccomp filters log (in the kernel's
# log) instead of stopping ember, to see what a new feature needs
# (scripts/seccomp-learn.py); never shipped.
ifdef SECCOMP_LEARN
BUILD   ?= build/seccomp-learn
EXTRA_CFLAGS += -DEMBER_SECCOMP_LEARN
endif
BUILD   ?= build
VERSION := 0.1.0
# The Firecracker release whose API ember answers: what Firecracker's clients
# see as the version (src/util/version.h explains the scheme).
FIRECRACKER_API := 1.14.0

CFLAGS_WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
               -Wformat=2 -Wno-format-nonliteral -Wvla
CFLAGS  ?= -O2 -g
CJSON_CFLAGS := $(shell pkg-config --cflags libcjson 2>/dev/null)
CJSON_LIBS   := $(shell pkg-config --libs libcjson 2>/dev/null || echo -lcjson)
SECCOMP_CFLAGS := $(shell pkg-config --cflags libseccomp 2>/dev/null)
SECCOMP_LIBS   := $(shell pkg-config --libs libseccomp 2>/dev/null || echo -lseccomp)
# Nettle is linked statically (Debian's nettle-dev ships libnettle.a): ember uses
# only AES-GCM from it, and one shared library less to load and relocate is
# ~0.06 ms less CPU before the API socket is ready (bench/api.sh).
NETTLE_LIBS    := -Wl,-Bstatic -lnettle -Wl,-Bdynamic
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE $(CFLAGS_WARN) $(CFLAGS) -Isrc -I$(BUILD)/gen -MMD -MP \
              -DEMBER_VERSION=\"$(VERSION)\" \
              -DEMBER_FIRECRACKER_API=\"$(FIRECRACKER_API)\" $(CJSON_CFLAGS) $(SECCOMP_CFLAGS) $(EXTRA_CFLAGS)
LDLIBS  := -luring $(CJSON_LIBS) $(SECCOMP_LIBS) $(NETTLE_LIBS) -lm -ldl -lpthread $(EXTRA_LDLIBS)

# src/sandbox/bpfgen.c is a build-time tool: it compiles ember's own seccomp
# filters into $(BUILD)/gen/seccomp_bpf.h, which seccomp.c includes.
BPFGEN_SRC := src/sandbox/bpfgen.c
SRCS := $(filter-out $(BPFGEN_SRC),$(shell find src -name '*.c' -not -path 'src/jailer/*' \
          -not -path 'src/tools/*' | sort))
OBJS := $(SRCS:%.c=$(BUILD)/obj/%.o)
# ember-jailer: its own program, sharing only the error messages.
JAILER_SRCS := $(sort $(wildcard src/jailer/*.c)) src/util/error.c
JAILER_OBJS := $(JAILER_SRCS:%.c=$(BUILD)/obj/%.o)
LIB_OBJS := $(filter-out $(BUILD)/obj/src/main.o,$(OBJS))
# ember-snapshot-merge: Diff snapshots' memory files merged onto their base (src/tools/).
MERGE_OBJS := $(BUILD)/obj/src/tools/snapshot_merge.o $(BUILD)/obj/src/snapshot/memfile.o \
              $(BUILD)/obj/src/util/error.o

UNIT_SRCS := $(sort $(wildcard tests/unit/*.c))
UNIT_OBJS := $(UNIT_SRCS:%.c=$(BUILD)/obj/%.o)
CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS   := $(shell pkg-config --libs check 2>/dev/null)

.PHONY: all demo test unit-test guest-test console-test api-test snapshot-test seccomp-test jailer-test \
        jailer-test-sanitize linux-smoke-test test-linux \
        migration-test vhost-user-test vhost-user-net-test test-sanitize fuzz fuzz-build bench bench-startup bench-api bench-jailer \
        bench-linux-boot bench-snapshot bench-vhost-user bench-virtiofs bench-jitter bench-reserved-core \
        clang guests format format-check clean bench install uninstall go-sdk-test clients-test

all: $(BUILD)/ember $(BUILD)/ember-jailer $(BUILD)/ember-uffd-handler $(BUILD)/ember-snapshot-merge

SHELL := /bin/bash
.SECONDARY:

# V=1 shows the commands.
Q := $(if $(V),,@)

$(BUILD)/ember: $(OBJS)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

$(BUILD)/bpfgen: $(BUILD)/obj/src/sandbox/bpfgen.o $(BUILD)/obj/src/sandbox/filters.o \
                 $(BUILD)/obj/src/sandbox/rules.o $(BUILD)/obj/src/util/error.o
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

$(BUILD)/gen/seccomp_bpf.h: $(BUILD)/bpfgen
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  GEN     $@")
	$(Q)$< > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/src/sandbox/seccomp.o: $(BUILD)/gen/seccomp_bpf.h

$(BUILD)/ember-jailer: $(JAILER_OBJS)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDFLAGS)

# An example page-fault handler for the Uffd snapshot memory backend: its own program.
UFFD_HANDLER_OBJS := $(BUILD)/obj/tools/uffd-handler/uffd_handler.o

$(BUILD)/ember-uffd-handler: $(UFFD_HANDLER_OBJS)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDFLAGS) $(CJSON_LIBS) -lm

$(BUILD)/ember-snapshot-merge: $(MERGE_OBJS)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDFLAGS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) $(if $(filter tests/%,$<),$(CHECK_CFLAGS) -Itests/unit) -c -o $@ $<

$(BUILD)/unit-tests: $(UNIT_OBJS) $(LIB_OBJS)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDFLAGS) $(CHECK_LIBS) $(LDLIBS)

$(BUILD)/runbench: bench/runbench.c bench/timing.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $<

$(BUILD)/apibench: bench/apibench.c bench/timing.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $<

$(BUILD)/jailbench: bench/jailbench.c bench/timing.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $<

$(BUILD)/restorebench: bench/restorebench.c bench/timing.h bench/spawn.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $<

$(BUILD)/migratebench: bench/migratebench.c bench/timing.h bench/spawn.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $<

bench-jailer:
	bench/jailer.sh

bench: bench-startup bench-api

bench-api:
	bench/api.sh

bench-startup:
	bench/startup.sh

bench-linux-boot:
	bench/linux-boot.sh

bench-snapshot:
	bench/snapshot.sh

bench-vhost-user:
	bench/vhost_user.sh

bench-virtiofs:
	bench/virtiofs.sh

bench-reserved-core:
	bench/reserved_core.sh

bench-jitter:
	bench/jitter.sh

# A real Linux guest under ember (virtio-mmio and virtio-pci) and, as the
# reference, under QEMU: every device checked from inside the guest and from
# the host. Root (network namespace, tap); the kernel build is cached.
test-linux: all
	tests/linux/run.sh --vmm both

guests:
	$(MAKE) -C guest O=$(abspath $(BUILD))/guest CC=$(CC)

demo:
	@scripts/install-deps.sh build
	@$(MAKE) --no-print-directory all guests >/dev/null
	$(BUILD)/ember run --kernel $(BUILD)/guest/hello.elf

# The Uffd tests (tests/unit/test_uffd.c) run the example page-fault handler.
unit-test: $(BUILD)/unit-tests $(BUILD)/ember-uffd-handler
	EMBER_UFFD_HANDLER=$(abspath $(BUILD))/ember-uffd-handler $(BUILD)/unit-tests

guest-test: all guests
	EMBER=$(BUILD)/ember GUEST_DIR=$(abspath $(BUILD))/guest OUT_DIR=$(abspath $(BUILD))/guest-tests NO_BUILD=1 \
	  tests/guest/run.sh

# ember's console on pipes, files and a terminal.
console-test: all guests
	EMBER=$(abspath $(BUILD))/ember GUEST_DIR=$(abspath $(BUILD))/guest tests/console/test_console.py

# Debian's stock kernel under ember: banner, command line, e820, initrd,
# memory init (about 90 s here).
linux-smoke-test: all
	EMBER=$(abspath $(BUILD))/ember tests/linux/debian-smoke.sh

# End-to-end tests of the API over its unix socket (Python 3, standard library), then
# the conformance walk of Firecracker's API (and README's table against it); both run.
api-test: all guests
	export EMBER=$(BUILD)/ember GUEST_DIR=$(abspath $(BUILD))/guest; \
	  tests/api/test_api.py; api=$$?; tests/api/test_conformance.py; conformance=$$?; \
	  tests/api/test_metrics.py; metrics=$$?; exit $$((api | conformance | metrics))

# Live migration end to end (Python 3, standard library): a guest writing its disk migrated
# ten times between embers (unix, TCP, local mode) and its image checked, pre-copy rounds of an
# SMP guest dirtying memory, the metrics' migration group, bad peers and requests refused.
migration-test: all guests
	EMBER=$(abspath $(BUILD))/ember GUEST_DIR=$(abspath $(BUILD))/guest tests/migration/test_migration.py

# vhost-user end to end (Python 3, standard library): Debian's qemu-storage-daemon serves a
# freestanding guest's disk through ember's vhost-user front-end on both transports (the image
# checked block by block), the daemon killed under I/O, hostile back-ends; Debian's virtiofsd
# serves a directory as virtio-fs to a guest speaking FUSE (what it writes checked on the host),
# virtiofsd killed mid-run; DPDK's testpmd (macswap) echoes a guest's frames through
# vhost-user-net in client and server mode, QEMU as the reference, testpmd killed and restarted
# under traffic; each skipped without its back-end.
vhost-user-test: all guests
	EMBER=$(abspath $(BUILD))/ember GUEST_DIR=$(abspath $(BUILD))/guest tests/vhost_user/test_vhost_user.py

# vhost-user-net against DPDK's testpmd: ~20 s a test (the guest's bursts run at the emulated
# CPL0 here), so the sanitizer pass leaves it out (its parsers and listener are unit-tested there).
vhost-user-net-test: all guests
	EMBER=$(abspath $(BUILD))/ember GUEST_DIR=$(abspath $(BUILD))/guest tests/vhost_user/test_vhost_user_net.py

# Snapshots end to end (Python 3, standard library): guest/snapcount saved, killed and restored
# (File and Uffd backends, Full and Diff), and the refusals of bad snapshots and requests.
snapshot-test: all guests
	EMBER=$(BUILD)/ember GUEST_DIR=$(abspath $(BUILD))/guest tests/snapshot/test_snapshot.py

# The seccomp filters hold inside ember's real threads: a test-only preload
# library makes each kind of thread attempt forbidden system calls.
$(BUILD)/seccomp-trigger.so: tests/seccomp/trigger.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(CFLAGS_WARN) -O2 -g -shared -fPIC -o $@ $< -ldl -lpthread

seccomp-test: all guests $(BUILD)/seccomp-trigger.so
	EMBER=$(BUILD)/ember GUEST_DIR=$(abspath $(BUILD))/guest TRIGGER=$(BUILD)/seccomp-trigger.so \
	  tests/seccomp/run.sh

# ember-jailer end to end: guests booted in jails, cgroup limits, namespaces, bad input.
# Root (it mounts, makes device nodes, changes users).
jailer-test: all guests
	EMBER=$(abspath $(BUILD))/ember JAILER=$(abspath $(BUILD))/ember-jailer \
	  GUEST_DIR=$(abspath $(BUILD))/guest tests/jailer/test_jailer.py

# Firecracker's clients (firecracker-containerd, Kata Containers, flintlock): their own request
# sequences and launch lines, replayed byte for byte.
clients-test: all guests
	EMBER=$(abspath $(BUILD))/ember GUEST_DIR=$(abspath $(BUILD))/guest tests/clients/test_clients.py

# The real firecracker-go-sdk drives ember as firecracker-containerd does (tests/clients/).
# The SDK's source is not in Debian: FC_GO_SDK_SRC names a checkout (or its git directory),
# else /usr/local/src/firecracker-go-sdk is used if there; without one the test skips and says
# so (part of `make test`; Go and the Debian libraries are installed only when a source is there).
go-sdk-test: all guests
	@if [ -n "$(FC_GO_SDK_SRC)" ] || [ -d /usr/local/src/firecracker-go-sdk ]; then \
	  scripts/install-deps.sh go-sdk; fi
	EMBER=$(abspath $(BUILD))/ember GUEST_DIR=$(abspath $(BUILD))/guest tests/clients/run-go-sdk.sh

# The whole suite; CI runs exactly this. Each stage's time is printed as it ends and all of
# them at the end (CI must stay well under an hour).
TEST_STAGES := format-check all unit-test guest-test console-test api-test snapshot-test \
  migration-test vhost-user-test vhost-user-net-test clients-test seccomp-test jailer-test \
  go-sdk-test linux-smoke-test test-sanitize clang fuzz test-linux
test:
	@scripts/install-deps.sh test
	@set -e; times=""; start=$$(date +%s); \
	for stage in $(TEST_STAGES); do \
	  t=$$(date +%s); \
	  $(MAKE) --no-print-directory $$stage FUZZ_SECONDS=$(TEST_FUZZ_SECONDS); \
	  took="$$stage $$(( $$(date +%s) - t ))s"; times="$$times $$took"; \
	  echo "make test: $$took"; \
	done; \
	echo "make test: passed in $$(( $$(date +%s) - start )) s:$$times"

# AddressSanitizer + UndefinedBehaviorSanitizer build, running the unit and
# guest tests.
SANITIZE_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
# QEMU's reference runs of the guest tests once per make test: not again beside the
# sanitized ember.
test-sanitize:
	QEMU_REFERENCE=off $(MAKE) BUILD=build/sanitize CC=clang EXTRA_CFLAGS="$(SANITIZE_FLAGS)" \
	  unit-test guest-test console-test api-test snapshot-test migration-test vhost-user-test \
	  clients-test
	$(MAKE) jailer-test-sanitize

# The jailer built with the sanitizers, jailing the plain ember: a jail has no /proc, which
# LeakSanitizer needs at exit, so leak checks are off there (the jailer ends in exec or exit).
jailer-test-sanitize: all guests
	$(MAKE) BUILD=build/sanitize CC=clang EXTRA_CFLAGS="$(SANITIZE_FLAGS)" build/sanitize/ember-jailer
	ASAN_OPTIONS=detect_leaks=0 EMBER=$(abspath $(BUILD))/ember \
	  JAILER=$(abspath build/sanitize)/ember-jailer GUEST_DIR=$(abspath $(BUILD))/guest \
	  tests/jailer/test_jailer.py

# Warnings must be clean under clang too.
clang:
	$(MAKE) BUILD=build/clang CC=clang all build/clang/unit-tests

# libFuzzer targets (clang), each run for FUZZ_SECONDS with ASan and UBSan (any undefined
# behaviour ends the run). tests/fuzz/fuzz_NAME.c is a target; tests/fuzz/support/ holds what
# targets share; tests/fuzz/NAME.dict, when there, is its dictionary.
FUZZ_SECONDS ?= 60
TEST_FUZZ_SECONDS ?= 30
FUZZ_SRCS    := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_NAMES   := $(notdir $(FUZZ_SRCS:.c=))
FUZZ_BUILD   := build/fuzz
FUZZ_SUPPORT_OBJS := $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(sort $(wildcard tests/fuzz/support/*.c)))
FUZZ_FLAGS   := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined \
                -fno-omit-frame-pointer

fuzz-build:
	$(MAKE) BUILD=$(FUZZ_BUILD) CC=clang EXTRA_CFLAGS="$(FUZZ_FLAGS)" $(addprefix $(FUZZ_BUILD)/,$(FUZZ_NAMES))

$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_%.o $(FUZZ_SUPPORT_OBJS) $(LIB_OBJS)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_CFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDFLAGS) $(LDLIBS)

# FUZZ_JOBS targets at a time (the test machines have 2 cores).
FUZZ_JOBS ?= 2

fuzz: fuzz-build guests
	FUZZ_BOOT_SEEDS=$(BUILD)/guest tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_JOBS) $(FUZZ_NAMES)

FORMAT_FILES = $(SRCS) $(UNIT_SRCS) $(shell find src tests guest bench tools -name '*.h' -o -name '*.c' | sort -u)

format:
	clang-format -i $(FORMAT_FILES)

format-check:
	clang-format --dry-run --Werror $(FORMAT_FILES)

# Installs ember and ember-jailer in $(DESTDIR)$(PREFIX)/bin, with the names
# Firecracker's clients run them by: firecracker -> ember (its API socket is
# then /run/firecracker.socket by default) and jailer -> ember-jailer. A jail
# needs a regular file as --exec-file, not a link: README, "Installing".
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
INSTALL ?= install

install: $(BUILD)/ember $(BUILD)/ember-jailer $(BUILD)/ember-snapshot-merge
	$(INSTALL) -d $(DESTDIR)$(BINDIR)
	$(INSTALL) -m 0755 $(BUILD)/ember $(BUILD)/ember-jailer $(BUILD)/ember-snapshot-merge \
	  $(DESTDIR)$(BINDIR)/
	ln -sfn ember $(DESTDIR)$(BINDIR)/firecracker
	ln -sfn ember-jailer $(DESTDIR)$(BINDIR)/jailer

uninstall:
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,ember ember-jailer ember-snapshot-merge firecracker \
	  jailer)

clean:
	rm -rf build

-include $(OBJS:.o=.d) $(JAILER_OBJS:.o=.d) $(UFFD_HANDLER_OBJS:.o=.d) $(BUILD)/obj/src/tools/snapshot_merge.d $(UNIT_OBJS:.o=.d) $(BUILD)/obj/$(BPFGEN_SRC:.c=.d) $(wildcard $(FUZZ_BUILD)/obj/tests/fuzz/*.d $(FUZZ_BUILD)/obj/tests/fuzz/support/*.d)
