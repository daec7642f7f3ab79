# skein build. `make` builds ./skein (CPU always; CUDA when nvcc is found, MPI when mpicc is
# found). `make test` runs every test; `make demo` runs the embedded demo; both install the
# Debian packages they need first (`make deps`). `make test-gpu` runs the device tests on
# CUDA (a GPU machine: `make gpu-deps` here, `. scripts/gpu_env.sh` there). Overrides: CC=, CXX=, NVCC=, MPICC=,
# NCCL_HOME=, GLOO_HOME=, CUDNN_HOME=, CUDA_HOME=, MPI_CFLAGS=, MPI_LIBS=, BLAS_CFLAGS=, BLAS_LIBS=, NO_CUDA=1,
# NO_MPI=1, NO_NCCL=1, NO_GLOO=1, NO_CUDNN=1.
# WERROR=1 makes every warning an error (CI, .ci/run); the default keeps them warnings, so a
# compiler newer than CI's still builds.

CC       ?= cc
BUILD    ?= build
CSTD      = -std=c11 -D_GNU_SOURCE -fno-math-errno
WARN      = -Wall -Wextra -Wshadow -Wmissing-prototypes -Wstrict-prototypes -Wno-unused-parameter $(if $(WERROR),-Werror)
OPT      ?= -O3 -march=native -fno-finite-math-only
CFLAGS   += $(CSTD) $(WARN) $(OPT) -g -fopenmp -MMD -MP -Isrc
LDLIBS   += -fopenmp -lm -lpthread

PKGS_DEBIAN = build-essential pkg-config python3 python3-venv libopenblas-openmp-dev libpcre2-dev libcjson-dev libutf8proc-dev python3-doc openmpi-bin libopenmpi-dev libgloo-dev libmicrohttpd-dev libcurl4-openssl-dev curl

BLAS_CFLAGS ?= $(shell pkg-config --cflags openblas 2>/dev/null)
BLAS_LIBS   ?= $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
CFLAGS  += $(BLAS_CFLAGS) $(shell pkg-config --cflags libcjson libpcre2-8 libutf8proc libmicrohttpd libcurl 2>/dev/null)
LDLIBS  += $(BLAS_LIBS) $(shell pkg-config --libs libcjson libpcre2-8 libutf8proc libmicrohttpd libcurl 2>/dev/null || echo -lcjson -lpcre2-8 -lutf8proc -lmicrohttpd -lcurl)

# Optional engines: detected here, reported by `make`, used by the issues that bring them.
NVCC  ?= $(shell command -v nvcc 2>/dev/null)
MPICC ?= $(shell command -v mpicc 2>/dev/null)
ifdef NO_CUDA
NVCC :=
endif
ifdef NO_MPI
MPICC :=
endif

# MPI (src/comm/comm_mpi.c): flags from the wrapper (OpenMPI --showme, MPICH -show), so every
# file keeps $(CC); SKEIN_HAVE_MPI tells comm.c the implementation is built in.
ifneq ($(MPICC),)
ifeq ($(origin MPI_CFLAGS),undefined)
MPI_CFLAGS := $(shell $(MPICC) --showme:compile 2>/dev/null || $(MPICC) -compile_info 2>/dev/null | cut -d' ' -f2- | tr ' ' '\n' | grep -E '^-(I|D)' | tr '\n' ' ')
endif
ifeq ($(origin MPI_LIBS),undefined)
MPI_LIBS   := $(shell $(MPICC) --showme:link 2>/dev/null || $(MPICC) -link_info 2>/dev/null | cut -d' ' -f2- | tr ' ' '\n' | grep -E '^-(L|l|Wl)' | tr '\n' ' ')
endif
CFLAGS += -DSKEIN_HAVE_MPI
$(BUILD)/src/comm/comm_mpi.o: CFLAGS += $(MPI_CFLAGS)
LDLIBS += $(MPI_LIBS)
endif

# NCCL (src/comm/comm_nccl.c, C against NCCL's and the CUDA runtime's C APIs): built when nvcc
# is found and nccl.h is in NCCL_HOME (default: the CUDA toolkit, then /usr/local, /usr).
# Where only libnccl.so.2 exists (the pip wheel on the GPU machine) it is linked by that name.
# The libraries' folders go into the rpath so ./skein runs without LD_LIBRARY_PATH.
CUDA_HOME ?= $(if $(NVCC),$(patsubst %/bin/,%,$(dir $(realpath $(NVCC)))))
CUDA_LIBDIR := $(if $(NVCC),$(firstword $(foreach d,lib64 lib targets/x86_64-linux/lib,$(if $(wildcard $(CUDA_HOME)/$(d)/libcudart.so*),$(CUDA_HOME)/$(d)))))
NCCL_HOME ?= $(firstword $(foreach d,$(CUDA_HOME) /usr/local /usr,$(if $(wildcard $(d)/include/nccl.h),$(d))))
ifdef NO_NCCL
NCCL_HOME :=
endif
ifneq ($(and $(NVCC),$(NCCL_HOME),$(wildcard $(NCCL_HOME)/include/nccl.h)),)
HAVE_NCCL    := 1
NCCL_LIBDIR  := $(firstword $(foreach d,lib lib64 lib/x86_64-linux-gnu,$(if $(wildcard $(NCCL_HOME)/$(d)/libnccl.so*),$(NCCL_HOME)/$(d))))
NCCL_LIB     := $(if $(wildcard $(NCCL_LIBDIR)/libnccl.so),-lnccl,-l:libnccl.so.2)
CFLAGS += -DSKEIN_HAVE_NCCL
$(BUILD)/src/comm/comm_nccl.o: CFLAGS += -isystem $(CUDA_HOME)/include -isystem $(NCCL_HOME)/include
LDLIBS += -L$(NCCL_LIBDIR) -Wl,-rpath,$(NCCL_LIBDIR) $(NCCL_LIB) -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcudart
endif

# gloo (src/comm/comm_gloo.c, and its C++ shim src/comm/gloo_shim.cc: the only C++ outside
# src/backend/cuda/): built when gloo's headers and library are in GLOO_HOME (default: /usr,
# Debian's libgloo-dev, then /usr/local). SKEIN_HAVE_GLOO tells comm.c it is built in.
GLOO_HOME ?= $(firstword $(foreach d,/usr /usr/local,$(if $(wildcard $(d)/include/gloo/allreduce.h),$(d))))
ifdef NO_GLOO
GLOO_HOME :=
endif
CXX_SRCS :=
ifneq ($(and $(GLOO_HOME),$(wildcard $(GLOO_HOME)/include/gloo/allreduce.h)),)
HAVE_GLOO   := 1
GLOO_LIBDIR := $(firstword $(foreach d,lib lib/x86_64-linux-gnu lib64,$(if $(wildcard $(GLOO_HOME)/$(d)/libgloo.so*),$(GLOO_HOME)/$(d))))
CXX_SRCS    := src/comm/gloo_shim.cc
CFLAGS += -DSKEIN_HAVE_GLOO
CXXFLAGS += $(if $(filter-out /usr,$(GLOO_HOME)),-isystem $(GLOO_HOME)/include)
LDLIBS += $(if $(filter-out /usr/lib,$(GLOO_LIBDIR)),-L$(GLOO_LIBDIR) -Wl$(comma)-rpath$(comma)$(GLOO_LIBDIR)) -lgloo -lstdc++
endif
comma := ,
CXXFLAGS += -std=c++17 $(OPT) -g -Wall -Wextra -Wshadow -Wno-unused-parameter $(if $(WERROR),-Werror) -MMD -MP -Isrc

# The CUDA backend (src/backend/cuda/*.cu, C++ only there): built when nvcc is found, for
# Hopper (sm_90 machine code) plus compute_90 PTX that newer GPUs compile at load. Only
# cuda.h is seen from C; SKEIN_HAVE_CUDA lets backend_create("cuda") reach it. The CUDA
# libraries' folder goes into the rpath. cuBLAS and cuBLASLt are not linked: the first CUDA
# backend opens them from there (src/backend/cuda/cuda_blas.cuh says why).
NVCCFLAGS ?= -O3 -lineinfo -gencode=arch=compute_90,code=sm_90 -gencode=arch=compute_90,code=compute_90
NVCC_WARN  = -Xcompiler -Wall,-Wextra,-Wno-unused-parameter $(if $(WERROR),-Werror all-warnings -Xcompiler -Werror)
CU_SRCS   := $(if $(NVCC),$(sort $(shell find src -name '*.cu')))
ifneq ($(NVCC),)
CFLAGS += -DSKEIN_HAVE_CUDA
LDLIBS += -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcudart -ldl -lstdc++
endif

# cuDNN 9 (src/backend/cuda/cuda_cudnn.cu: attention through its fused flash attention, by its
# backend graph API): built with the CUDA backend when cudnn_graph.h and libcudnn.so* are in
# CUDNN_HOME (default: the CUDA toolkit, then /usr/local, /usr; the GPU machine's PyTorch wheel
# through scripts/gpu_env.sh). Where only libcudnn.so.9 exists (the wheel) it is linked by that
# name; its folder goes into the rpath (libcudnn.so.9 loads its engine libraries from there).
# SKEIN_HAVE_CUDNN tells cuda.cu, the tests and bench attention that it is built in.
CUDNN_HOME ?= $(firstword $(foreach d,$(CUDA_HOME) /usr/local /usr,$(if $(wildcard $(d)/include/cudnn_graph.h),$(d))))
ifdef NO_CUDNN
CUDNN_HOME :=
endif
CUDNN_LIBDIR := $(if $(CUDNN_HOME),$(firstword $(foreach d,lib lib64 lib/x86_64-linux-gnu,$(if $(wildcard $(CUDNN_HOME)/$(d)/libcudnn.so*),$(CUDNN_HOME)/$(d)))))
CU_CPPFLAGS := -DSKEIN_CUDA_LIBDIR='"$(CUDA_LIBDIR)"'
ifneq ($(and $(NVCC),$(CUDNN_LIBDIR),$(wildcard $(CUDNN_HOME)/include/cudnn_graph.h)),)
HAVE_CUDNN := 1
CFLAGS += -DSKEIN_HAVE_CUDNN
CU_CPPFLAGS += -DSKEIN_HAVE_CUDNN -isystem $(CUDNN_HOME)/include
LDLIBS += -L$(CUDNN_LIBDIR) -Wl,-rpath,$(CUDNN_LIBDIR) $(if $(wildcard $(CUDNN_LIBDIR)/libcudnn.so),-lcudnn,-l:libcudnn.so.9)
else
CU_SRCS := $(filter-out src/backend/cuda/cuda_cudnn.cu,$(CU_SRCS))
endif

SRCS      := $(sort $(shell find src -name '*.c'))
LIB_SRCS  := $(filter-out src/cli/main.c,$(SRCS))
LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/%.o) $(CU_SRCS:%.cu=$(BUILD)/%.o) $(CXX_SRCS:%.cc=$(BUILD)/%.o)
# skein serve's dashboard page compiled in as bytes (src/serve/dashboard.h): od writes them as a C
# array, so embedding it needs nothing beyond make and coreutils.
LIB_OBJS  += $(BUILD)/gen/serve_dashboard.o
TEST_SRCS := $(sort $(wildcard tests/test_*.c))
TEST_BINS := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
# The tests that read SKEIN_TEST_DEVICE (test_device.h): make test-gpu runs them on cuda
# (test_comm's device case under mpirun, from tests/gpu_dp.sh; test_tp's ranks from tests/gpu_tp.sh).
GPU_TEST_BINS := $(patsubst %,$(BUILD)/tests/%,test_backend test_mixed test_gpt2 test_llama test_llama_hf test_engine test_comm test_tp)
# Debian packages the GPU machine lacks (../shared/GPU.md): make gpu-deps fetches them here,
# scripts/gpu_env.sh unpacks them there. libcurl (bench serve) is not among them: the GPU
# machine has Ubuntu's libcurl4-openssl-dev installed (seen 2026-12, curl 8.5.0).
GPU_DEBS = libcjson1 libcjson-dev libutf8proc2 libutf8proc-dev libpcre2-8-0 libpcre2-dev \
           libopenblas0-openmp libopenblas-openmp-dev libgfortran5 libquadmath0 libmicrohttpd12 libmicrohttpd-dev

.PHONY: all deps test-deps test test-gpu gpu-deps test-asan demo clean status
# The program is linked in $(BUILD); the default build also copies it to ./skein.
all: status $(BUILD)/skein $(if $(filter build,$(BUILD)),skein)

status:
	@printf 'skein build: CPU ✓ (OpenBLAS, OpenMP)  CUDA %s  cuDNN %s  MPI %s  gloo %s  NCCL %s\n' \
	  "$(if $(NVCC),✓ ($(NVCC)),✗)" \
	  "$(if $(HAVE_CUDNN),✓ ($(CUDNN_HOME)),✗)" \
	  "$(if $(MPICC),✓ ($(MPICC)),✗)" \
	  "$(if $(HAVE_GLOO),✓ ($(GLOO_HOME)),✗ (libgloo-dev))" \
	  "$(if $(HAVE_NCCL),✓ ($(NCCL_HOME)),✗)"

# cpu_lowp's and cpu_gemv's vector kernels add products as FMAs (ISO C mode leaves contraction
# off). Their 64-byte vectors pass between static functions only: GCC's note that their ABI
# differs without AVX-512 (builds without -march=native, test-asan's) concerns no caller outside.
$(BUILD)/src/backend/cpu/cpu_lowp.o $(BUILD)/src/backend/cpu/cpu_gemv.o: CFLAGS += -ffp-contract=fast -Wno-psabi

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cc
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) -std=c++20 $(NVCCFLAGS) $(NVCC_WARN) $(CU_CPPFLAGS) -Isrc -MMD -MP -c $< -o $@

$(BUILD)/gen/serve_dashboard.c: src/serve/dashboard.html
	@mkdir -p $(dir $@)
	{ echo '#include "serve/dashboard.h"'; echo 'const unsigned char dashboard_html[] = {'; \
	  od -An -v -tx1 $< | sed 's/ \([0-9a-f][0-9a-f]\)/0x\1,/g'; echo '};'; \
	  echo 'const size_t dashboard_html_len = sizeof dashboard_html;'; } >$@

$(BUILD)/gen/%.o: $(BUILD)/gen/%.c
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libskein.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/skein: $(BUILD)/src/cli/main.o $(BUILD)/libskein.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

skein: $(BUILD)/skein
	cp $< $@

$(BUILD)/tests/%: tests/%.c $(wildcard tests/*.h) $(BUILD)/libskein.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(BUILD)/libskein.a $(LDLIBS)

# $(call missing_debs,PKGS): shell that sets $$missing to the PKGS not installed.
missing_debs = missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done

# Installs missing Debian packages (as root), or prints the apt-get line to run.
deps:
	@$(call missing_debs,$(PKGS_DEBIAN)); \
	if [ -z "$$missing" ]; then echo "deps: all Debian packages present"; \
	elif [ "$$(id -u)" = 0 ]; then echo "deps: installing$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null || exit 1; \
	else echo "deps: run: sudo apt-get install -y$$missing"; exit 1; fi

# Debian packages only some tests use (cli_serve_web.sh: headless Chromium, openssl for a
# certificate): installed when missing and possible; never an error (those tests print SKIP).
PKGS_TEST_DEBIAN = chromium openssl
test-deps:
	@$(call missing_debs,$(PKGS_TEST_DEBIAN)); \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then echo "test-deps: installing$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null 2>&1 || \
	  echo "test-deps: could not install$$missing (their tests skip)"; \
	else echo "test-deps: missing$$missing (sudo apt-get install -y$$missing; their tests skip)"; fi

test: deps test-deps
	@$(MAKE) --no-print-directory all $(TEST_BINS)
	@BUILD=$(BUILD) SKEIN=$(BUILD)/skein sh tests/run.sh $(TEST_BINS)

# The device tests on the CUDA backend, then tests/gpu_*.sh (skein train --device cuda
# against the CPU run, in exact f32: SKEIN_CUDA_TF32 is cleared). Needs a GPU; on the GPU machine:
# . scripts/gpu_env.sh first.
test-gpu:
	@$(MAKE) --no-print-directory all $(GPU_TEST_BINS)
	@SKEIN_TEST_DEVICE=cuda SKEIN_CUDA_TF32=0 NCCL_NVLS_ENABLE=0 BUILD=$(BUILD) SKEIN=$(BUILD)/skein SKEIN_SCRIPTS='tests/gpu_*.sh' \
	  sh tests/run.sh $(GPU_TEST_BINS)

# Fetches the .deb files of GPU_DEBS into .debs/ (git ignores it) to carry to the GPU machine.
gpu-deps:
	@mkdir -p .debs && cd .debs && apt-get download $(GPU_DEBS) && ls -1 *.deb

# The same tests under AddressSanitizer + UBSan, in their own build folder.
test-asan: deps
	@$(MAKE) --no-print-directory BUILD=build-asan OPT="-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	  LDLIBS_EXTRA= test-asan-run

test-asan-run: LDLIBS += -fsanitize=address,undefined
test-asan-run: all $(TEST_BINS)
	@ASAN_OPTIONS=detect_leaks=0 BUILD=$(BUILD) SKEIN=$(BUILD)/skein SKEIN_QUICK=1 sh tests/run.sh $(TEST_BINS)

demo: deps
	@$(MAKE) --no-print-directory all
	./skein demo

clean:
	rm -rf build build-asan skein

-include $(LIB_OBJS:.o=.d) $(BUILD)/src/cli/main.d
