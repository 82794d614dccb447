# reflayer: one non-recursive Makefile; outputs in build/ (build/san-*/ for sanitizer builds).
#   make            build/libreflayer.a and the CLI build/reflayer
#   make check      install what is missing (deps), build with -Werror, run every test
#   make check SAN=1   the same with ASan+UBSan (SAN=thread: TSan)
#   make run        reflayerd on the default store, in the foreground, with a CLI demo beside it
#   make bench-clone   reflayer clone vs cp -a --reflink=always on a Debian rootfs
#   make bench-store   store: usage of 20 snapshots vs du, prepare latency, open of 1,000
#   make bench-rpc     reflayerd: Stat calls/s over 1 and 16 connections, Stat during a Prepare
#   make bench-import  reflayer import of a Debian image vs umoci unpack and tar -xzf
#   make bench-diff    rl_tree_diff of an unchanged clone vs reading both trees (C loop, diff -rq)
#   make bench         issue 7's side-by-side table on loop XFS and btrfs, two Debian rootfs:
#                      reflayerd Prepare (cold, warm pool, each durable and ephemeral) vs cp -a --reflink=always vs containerd's
#                      native snapshotter vs an overlayfs mount; Remove; chown; 50 snapshots [RUNS=5]
#   make bench-containerd   through ctr: prepare and chown -R of a Debian image's snapshot with
#                      reflayer (proxy snapshotter), native and overlayfs [RUNS=5 SNAPSHOTTERS=]
#   make bench-pool    warm-pool Prepare through the store API alone [RUNS= FSTYPE= ROOTFS=]
#   make bench-load    reflayerd under 64 clients of mixed calls for LOAD_SECONDS (default 300)
#   make fuzz [FUZZ_SECONDS=60]   the libFuzzer targets (clang, into build/fuzz/), each that long
#   make install [PREFIX=/usr/local] [DESTDIR=]
#   make format | clean | deps       V=1 shows the commands

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
SBINDIR ?= $(PREFIX)/sbin
DOCDIR ?= $(PREFIX)/share/doc/reflayer
SYSTEMDDIR ?= $(PREFIX)/lib/systemd/system
MANDIR ?= $(PREFIX)/share/man

ifeq ($(SAN),)
BUILD := build
SANFLAGS :=
else ifeq ($(SAN),thread)
BUILD := build/san-thread
SANFLAGS := -fsanitize=thread -fno-omit-frame-pointer
else
BUILD := build/san
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
endif

ifeq ($(V),)
Q := @
say = @printf '  %-7s %s\n' $(1) $(2);
else
Q :=
say :=
endif

CC ?= cc
PKG_CONFIG ?= pkg-config
DRIVER_PKGS := mount jansson libarchive libcrypto
CLI_PKGS := jansson mount
TEST_PKGS := criterion libcap libseccomp jansson libarchive libnghttp2 libprotobuf-c

WARN := -Wall -Wextra -Wshadow -Wformat=2 -Wmissing-prototypes -Wstrict-prototypes \
        -Wswitch-enum -Wundef -Wno-missing-field-initializers
ifneq ($(WERROR),)
WARN += -Werror
endif
CFLAGS ?= -O2 -g
CFLAGS += -std=gnu11 -D_GNU_SOURCE -fvisibility=hidden -pthread $(WARN) $(SANFLAGS) \
          -Iinclude -MMD -MP
LDFLAGS += -pthread $(SANFLAGS)

pc_cflags = $(shell $(PKG_CONFIG) --cflags $(1) 2>/dev/null)
pc_libs = $(shell $(PKG_CONFIG) --libs $(1) 2>/dev/null)

DRIVER_SRCS := $(wildcard driver/*.c)
DRIVER_OBJS := $(DRIVER_SRCS:%.c=$(BUILD)/obj/%.o)
CLI_SRCS := api/reflayer.c
CLI_OBJS := $(CLI_SRCS:%.c=$(BUILD)/obj/%.o)
# libreflayer-client: the client and the shared types it speaks, nothing of the engine.
CLIENT_SRCS := api/client.c driver/codec.c driver/types.c driver/error.c driver/idmap.c driver/util.c
CLIENT_OBJS := $(CLIENT_SRCS:%.c=$(BUILD)/obj/%.o)
CLIENT_PIC_OBJS := $(CLIENT_SRCS:%.c=$(BUILD)/pic/%.o)
DAEMON_PKGS := jansson libsystemd mount libcap libseccomp libnghttp2 libprotobuf-c
DAEMON_SRCS := $(wildcard daemon/*.c)
# containerd's snapshots.v1 messages: C generated at build time by protoc-c from our .proto.
PROTO_GEN := $(BUILD)/gen/snapshots.pb-c.c $(BUILD)/gen/snapshots.pb-c.h
PROTO_OBJ := $(BUILD)/obj/gen/snapshots.pb-c.o
DAEMON_OBJS := $(DAEMON_SRCS:%.c=$(BUILD)/obj/%.o) $(PROTO_OBJ)
CRASH_CHILD_SRC := tests/conformance/crash-child.c
# The fuzz harnesses (not their libFuzzer mains) are in the unit binary too: fuzz-regress
# replays the kept inputs through them. The RPC one calls the daemon's JSON-RPC layer.
FUZZ_HARNESS_SRCS := $(wildcard tests/fuzz/harness*.c)
RPC_SRCS := daemon/rpc.c daemon/creds.c daemon/log.c
TEST_SRCS := $(filter-out $(CRASH_CHILD_SRC),$(wildcard tests/unit/*.c) \
             $(wildcard tests/conformance/*.c) $(wildcard tests/integration/*.c) \
             $(wildcard tests/lib/*.c)) $(FUZZ_HARNESS_SRCS)
TEST_OBJS := $(TEST_SRCS:%.c=$(BUILD)/obj/%.o) $(RPC_SRCS:%.c=$(BUILD)/obj/%.o) $(PROTO_OBJ)
HEADERS := $(wildcard include/reflayer/*.h)

LIB := $(BUILD)/libreflayer.a
CLI := $(BUILD)/reflayer
CLIENT_LIB := $(BUILD)/libreflayer-client.a
CLIENT_SO := $(BUILD)/libreflayer-client.so.0
CLIENT_PC := $(BUILD)/reflayer-client.pc
DAEMON := $(BUILD)/reflayerd
UNIT := $(BUILD)/tests/unit
CRASH_CHILD := $(BUILD)/tests/crash-child

.PHONY: all check tests deps bench-deps bench bench-containerd fuzz fuzz-deps run bench-clone bench-store bench-pool bench-rpc bench-import bench-diff bench-load install format clean headers-check
all: $(LIB) $(CLIENT_LIB) $(CLIENT_SO) $(CLIENT_PC) $(CLI) $(DAEMON)

$(BUILD)/obj/driver/%.o: driver/%.c
	$(call say,CC,$<)mkdir -p $(@D) && $(CC) $(CFLAGS) $(call pc_cflags,$(DRIVER_PKGS)) -c $< -o $@

$(BUILD)/obj/api/%.o: api/%.c
	$(call say,CC,$<)mkdir -p $(@D) && $(CC) $(CFLAGS) -Idriver $(call pc_cflags,$(CLI_PKGS)) -c $< -o $@

$(BUILD)/obj/daemon/%.o: daemon/%.c | $(PROTO_GEN)
	$(call say,CC,$<)mkdir -p $(@D) && $(CC) $(CFLAGS) -Idriver -I$(BUILD)/gen $(call pc_cflags,$(DAEMON_PKGS)) -c $< -o $@

$(BUILD)/obj/tests/%.o: tests/%.c | $(PROTO_GEN)
	$(call say,CC,$<)mkdir -p $(@D) && $(CC) $(CFLAGS) -Idriver -Idaemon -I$(BUILD)/gen -Itests/lib -Itests/fuzz -Wno-format-truncation $(call pc_cflags,$(TEST_PKGS)) -c $< -o $@

$(PROTO_GEN) &: api/containerd/snapshots.proto
	$(call say,PROTOC,$<)mkdir -p $(BUILD)/gen && protoc-c -Iapi/containerd --c_out=$(BUILD)/gen $<

# Generated code: our warnings are for our code.
$(PROTO_OBJ): $(PROTO_GEN)
	$(call say,CC,$<)mkdir -p $(@D) && $(CC) $(filter-out -W%,$(CFLAGS)) $(call pc_cflags,libprotobuf-c) -c $(BUILD)/gen/snapshots.pb-c.c -o $@

$(LIB): $(DRIVER_OBJS)
	$(call say,AR,$@)rm -f $@ && ar rcs $@ $^

$(BUILD)/pic/%.o: %.c
	$(call say,CC,$<)mkdir -p $(@D) && $(CC) $(CFLAGS) -fPIC -Idriver $(call pc_cflags,jansson) -c $< -o $@

$(CLIENT_LIB): $(CLIENT_OBJS)
	$(call say,AR,$@)rm -f $@ && ar rcs $@ $^

$(CLIENT_SO): $(CLIENT_PIC_OBJS)
	$(call say,LD,$@)$(CC) $(LDFLAGS) -shared -Wl,-soname,libreflayer-client.so.0 -o $@ $^ \
		$(call pc_libs,jansson)

$(CLIENT_PC): Makefile
	$(call say,GEN,$@)mkdir -p $(@D) && printf '%s\n' 'prefix=$(PREFIX)' \
		'libdir=$(LIBDIR)' 'includedir=$(INCLUDEDIR)' '' 'Name: reflayer-client' \
		'Description: talk to reflayerd, the reflayer container storage daemon' \
		'Version: 0.1.0' 'Requires.private: jansson' 'Cflags: -I$${includedir}' \
		'Libs: -L$${libdir} -lreflayer-client' > $@

$(CLI): $(CLI_OBJS) $(CLIENT_LIB) $(LIB)
	$(call say,LD,$@)$(CC) $(LDFLAGS) -o $@ $(CLI_OBJS) $(CLIENT_LIB) $(LIB) \
		$(call pc_libs,$(CLI_PKGS) $(DRIVER_PKGS))

$(DAEMON): $(DAEMON_OBJS) $(LIB)
	$(call say,LD,$@)$(CC) $(LDFLAGS) -o $@ $(DAEMON_OBJS) $(LIB) $(call pc_libs,$(DAEMON_PKGS) $(DRIVER_PKGS))

$(UNIT): $(TEST_OBJS) $(CLIENT_LIB) $(LIB)
	$(call say,LD,$@)mkdir -p $(@D) && $(CC) $(LDFLAGS) -o $@ $(TEST_OBJS) $(CLIENT_LIB) $(LIB) \
		$(call pc_libs,$(TEST_PKGS) $(DRIVER_PKGS))

$(CRASH_CHILD): $(BUILD)/obj/$(CRASH_CHILD_SRC:.c=.o) $(LIB)
	$(call say,LD,$@)mkdir -p $(@D) && $(CC) $(LDFLAGS) -o $@ $< $(LIB) $(call pc_libs,$(DRIVER_PKGS))

tests: $(UNIT) $(CLI) $(DAEMON) $(CRASH_CHILD)

# containerd's own snapshotter test suite (tests/containerd/suite_test.go), a Go test binary
# that tests/integration/containerd-suite.c runs. Built offline: GOPATH mode against Debian's
# containerd 1.6 sources (golang-github-containerd-containerd-dev), Go's cache in $(BUILD).
CTR_SUITE := $(BUILD)/tests/containerd-suite
CTR_SRC := /usr/share/gocode/src/github.com/containerd/containerd
$(CTR_SUITE): $(wildcard tests/containerd/*.go) $(wildcard $(CTR_SRC)/snapshots/testsuite/*.go)
	$(call say,GO,$@)mkdir -p $(@D) && cd tests/containerd && GO111MODULE=off \
		GOPATH=/usr/share/gocode GOCACHE=$(abspath $(BUILD))/go-cache GOFLAGS=-buildvcs=false \
		go test -c -o $(abspath $@) .
tests: $(CTR_SUITE)

# Every public header compiles on its own.
headers-check: $(HEADERS)
	$(Q)for h in $(HEADERS); do \
		echo "#include <reflayer/$${h##*/}>" | $(CC) -std=gnu11 -D_GNU_SOURCE -Iinclude \
			-Wall -Wextra -Werror -fsyntax-only -x c - || { echo "header $$h is not self-contained"; exit 1; }; \
	done

# What the project needs from Debian, installed only when missing (quick when all is there).
DEPS_DEBS := build-essential pkg-config libmount-dev libcap-dev libseccomp-dev libjansson-dev \
             libcriterion-dev libarchive-dev libssl-dev libsystemd-dev xfsprogs btrfs-progs e2fsprogs \
             acl attr util-linux systemd runc debootstrap
# groff (tests/unit/manpages.c renders the man pages): priority important, so most systems
# have it, but minimal ones (debootstrap minbase, the debian:bookworm image) do not.
DEPS_DEBS += groff-base
# umoci: an independent OCI image tool; tests/lib/oci-fixture builds image layouts with it and
# its unpack is the reference tree the layer apply is compared with (tests/unit/oci.c).
DEPS_DEBS += umoci
# zstd, libcap2-bin: tests/unit/layer.c decompresses zstd layers with the zstd CLI to check
# diff_ids independently; oci-fixture sets a file capability with setcap.
DEPS_DEBS += zstd libcap2-bin
# strace: tests/unit/tree.c counts the system calls a clone makes per entry.
DEPS_DEBS += strace
# The containerd door (daemon/grpc.c, daemon/snapshots.c): HTTP/2 from libnghttp2, protobuf
# messages from protobuf-c, C generated from api/containerd/snapshots.proto by protoc-c.
DEPS_DEBS += libnghttp2-dev libprotobuf-c-dev protobuf-c-compiler
# Go and containerd's Go sources: tests/containerd builds containerd's snapshotter test suite.
DEPS_DEBS += golang-go golang-github-containerd-containerd-dev
# containerd (with ctr and its runc shim; runc is above): tests/integration/containerd.c runs
# reflayerd as containerd's proxy snapshotter, and `make bench`/`bench-containerd` set its
# native and overlayfs snapshotters beside reflayer. Each starts its own containerd on private
# sockets, never the system's.
DEPS_DEBS += containerd
# bc: the benchmark scripts' arithmetic.
BENCH_DEBS := bc
# apt-get install of the packages in $(1) that are missing.
define install_debs
	$(Q)missing=$$(for p in $(1); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing" $$missing; \
		[ "$$(id -u)" = 0 ] || { echo "deps: run as root to apt-get install:" $$missing; exit 1; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

deps:
	$(call install_debs,$(DEPS_DEBS))

bench-deps: deps
	$(call install_debs,$(BENCH_DEBS))

check: deps
	$(Q)$(MAKE) --no-print-directory WERROR=1 SAN=$(SAN) headers-check all tests
	$(Q)tests/run-unit $(UNIT) $(CLI)

run: deps all
	$(Q)tests/run-demo $(CLI) $(DAEMON)

bench-clone: deps all
	$(Q)tests/bench/clone.sh $(CLI)

STORE_BENCH := $(BUILD)/bench/store-bench
$(STORE_BENCH): $(BUILD)/obj/tests/bench/store-bench.o $(LIB)
	$(call say,LD,$@)mkdir -p $(@D) && $(CC) $(LDFLAGS) -o $@ $< $(LIB) $(call pc_libs,$(DRIVER_PKGS))

bench-store: deps all $(STORE_BENCH)
	$(Q)tests/bench/store.sh $(STORE_BENCH)

POOL_BENCH := $(BUILD)/bench/pool-bench
$(POOL_BENCH): $(BUILD)/obj/tests/bench/pool-bench.o $(LIB)
	$(call say,LD,$@)mkdir -p $(@D) && $(CC) $(LDFLAGS) -o $@ $< $(LIB) $(call pc_libs,$(DRIVER_PKGS))

bench-pool: bench-deps all $(POOL_BENCH)
	$(Q)tests/bench/pool.sh $(POOL_BENCH)

bench-rpc: deps all
	$(Q)tests/bench/rpc.sh

bench-import: deps all
	$(Q)tests/bench/import.sh $(CLI) $(DAEMON)

DIFF_BENCH := $(BUILD)/bench/diff-bench
$(DIFF_BENCH): $(BUILD)/obj/tests/bench/diff-bench.o $(LIB)
	$(call say,LD,$@)mkdir -p $(@D) && $(CC) $(LDFLAGS) -o $@ $< $(LIB) $(call pc_libs,$(DRIVER_PKGS))

bench-diff: deps all $(DIFF_BENCH)
	$(Q)tests/bench/diff.sh $(DIFF_BENCH)

PREPARE_BENCH := $(BUILD)/bench/prepare-bench
$(PREPARE_BENCH): $(BUILD)/obj/tests/bench/prepare-bench.o $(CLIENT_LIB)
	$(call say,LD,$@)mkdir -p $(@D) && $(CC) $(LDFLAGS) -o $@ $< $(CLIENT_LIB) $(call pc_libs,jansson)

bench: bench-deps all $(PREPARE_BENCH)
	$(Q)tests/bench/bench.sh $(CLI) $(DAEMON) $(PREPARE_BENCH)

bench-containerd: bench-deps all $(PREPARE_BENCH)
	$(Q)tests/bench/containerd.sh $(CLI) $(DAEMON) $(PREPARE_BENCH)

LOAD_BENCH := $(BUILD)/bench/load-bench
$(LOAD_BENCH): $(BUILD)/obj/tests/bench/load-bench.o $(CLIENT_LIB)
	$(call say,LD,$@)mkdir -p $(@D) && $(CC) $(LDFLAGS) -o $@ $< $(CLIENT_LIB) $(call pc_libs,jansson)

bench-load: deps all $(LOAD_BENCH)
	$(Q)tests/bench/load.sh

# libFuzzer targets (tests/fuzz/): the harnesses, the driver and the daemon's JSON-RPC layer
# compiled again with clang, libFuzzer and ASan+UBSan, into build/fuzz/. `make fuzz` runs each
# for FUZZ_SECONDS on a copy of its seed corpus (tests/fuzz/run). Only this needs clang (and
# llvm, for llvm-symbolizer): make check does not.
FUZZ_SECONDS ?= 60
FUZZ_CC ?= clang
FUZZ := build/fuzz
FUZZ_TARGETS := rpc layer image
FUZZ_FLAGS := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
              -fno-omit-frame-pointer -g -O1
FUZZ_CFLAGS := -std=gnu11 -D_GNU_SOURCE -fvisibility=hidden -pthread $(WARN) $(FUZZ_FLAGS) \
               -Iinclude -Idriver -Idaemon -Itests/fuzz -MMD -MP
FUZZ_PKGS := $(sort $(DRIVER_PKGS) $(DAEMON_PKGS))
FUZZ_COMMON_OBJS := $(patsubst %.c,$(FUZZ)/obj/%.o,$(DRIVER_SRCS) $(RPC_SRCS) $(FUZZ_HARNESS_SRCS))
FUZZ_BINS := $(FUZZ_TARGETS:%=$(FUZZ)/%)

fuzz-deps: deps
	$(call install_debs,clang llvm)

$(FUZZ)/obj/%.o: %.c | fuzz-deps
	$(call say,CC,$<)mkdir -p $(@D) && $(FUZZ_CC) $(FUZZ_CFLAGS) $(call pc_cflags,$(FUZZ_PKGS)) -c $< -o $@

# One libFuzzer main (tests/fuzz/main.c) per target, told which by FUZZ_TARGET.
$(FUZZ)/obj/tests/fuzz/main-%.o: tests/fuzz/main.c | fuzz-deps
	$(call say,CC,$@)mkdir -p $(@D) && $(FUZZ_CC) $(FUZZ_CFLAGS) -DFUZZ_TARGET=$* $(call pc_cflags,$(FUZZ_PKGS)) -c $< -o $@

$(FUZZ_BINS): $(FUZZ)/%: $(FUZZ)/obj/tests/fuzz/main-%.o $(FUZZ_COMMON_OBJS)
	$(call say,LD,$@)$(FUZZ_CC) $(FUZZ_FLAGS) -pthread -o $@ $^ $(call pc_libs,$(FUZZ_PKGS))

fuzz: $(FUZZ_BINS)
	$(Q)tests/fuzz/run $(FUZZ) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

install: all install-man
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR)/reflayer
	install -m 0755 $(CLI) $(DESTDIR)$(BINDIR)/reflayer
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(SYSTEMDDIR) $(DESTDIR)$(DOCDIR) \
		$(DESTDIR)$(PREFIX)/lib/sysusers.d $(DESTDIR)$(PREFIX)/lib/tmpfiles.d
	install -m 0755 $(DAEMON) $(DESTDIR)$(SBINDIR)/reflayerd
	sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' \
		systemd/reflayerd.service.in > $(DESTDIR)$(SYSTEMDDIR)/reflayerd.service
	install -m 0644 systemd/reflayerd.socket systemd/reflayerd-containerd.socket \
		$(DESTDIR)$(SYSTEMDDIR)/
	install -m 0644 systemd/reflayer.sysusers $(DESTDIR)$(PREFIX)/lib/sysusers.d/reflayer.conf
	install -m 0644 systemd/reflayer.tmpfiles $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/reflayer.conf
	install -m 0644 api/PROTOCOL.md README.md $(DESTDIR)$(DOCDIR)/
	install -m 0644 $(LIB) $(CLIENT_LIB) $(DESTDIR)$(LIBDIR)/
	install -m 0755 $(CLIENT_SO) $(DESTDIR)$(LIBDIR)/
	ln -sf libreflayer-client.so.0 $(DESTDIR)$(LIBDIR)/libreflayer-client.so
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig
	install -m 0644 $(CLIENT_PC) $(DESTDIR)$(LIBDIR)/pkgconfig/
	install -m 0644 $(HEADERS) $(DESTDIR)$(INCLUDEDIR)/reflayer/

# The man pages need nothing built (tests/unit/manpages.c installs them alone).
.PHONY: install-man
install-man:
	install -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8
	install -m 0644 api/reflayer.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 daemon/reflayerd.8 $(DESTDIR)$(MANDIR)/man8/

format:
	clang-format -i driver/*.c driver/*.h include/reflayer/*.h api/*.c tests/unit/*.c tests/lib/*.[ch] \
		tests/fuzz/*.[ch]

clean:
	rm -rf build

# A missing .d is no goal of its own: without this empty rule, make's built-in %: %.o would
# try to link main-image.d from main-image.d.o, compiling main.c for a target "image.d".
$(FUZZ_COMMON_OBJS:.o=.d) $(FUZZ_TARGETS:%=$(FUZZ)/obj/tests/fuzz/main-%.d): ;
-include $(FUZZ_COMMON_OBJS:.o=.d) $(FUZZ_TARGETS:%=$(FUZZ)/obj/tests/fuzz/main-%.d)
-include $(DRIVER_OBJS:.o=.d) $(CLI_OBJS:.o=.d) $(CLIENT_OBJS:.o=.d) $(CLIENT_PIC_OBJS:.o=.d) $(DAEMON_OBJS:.o=.d) $(TEST_OBJS:.o=.d) $(BUILD)/obj/$(CRASH_CHILD_SRC:.c=.d)
