# Sourced on the GPU machine (no package registry there) before building or running skein:
#   . scripts/gpu_env.sh && make -j16 && make test-gpu
# Unpacks the Debian packages that `make gpu-deps` fetched into .debs/ (cJSON, utf8proc,
# PCRE2 headers, and OpenBLAS with its Fortran runtime) into $SKEIN_SYSROOT (default
# /tmp/sysroot) with dpkg -x, and exports what the Makefile and the programs need: CFLAGS
# and LDLIBS with the sysroot's include and library folders (and rpaths), BLAS_CFLAGS and
# BLAS_LIBS when the machine has no OpenBLAS headers of its own, NCCL_HOME from the PyTorch
# environment's nvidia.nccl, CUDNN_HOME from its nvidia.cudnn (include/, lib/libcudnn.so.9),
# LD_LIBRARY_PATH for the libraries' own dependencies (a RUNPATH does not reach them: cuDNN's
# lib, and the folders of the wheels' libnvrtc.so.*, which cuDNN's runtime-compiled engines
# load), and NCCL_NVLS_ENABLE=0 (NVLink multicast stays off on shared hosts).
SKEIN_SYSROOT=${SKEIN_SYSROOT:-/tmp/sysroot}
if ! ls .debs/*.deb >/dev/null 2>&1; then
    echo "gpu_env.sh: no .debs/*.deb here: run 'make gpu-deps' on a machine with apt and carry .debs" >&2
    return 1 2>/dev/null || exit 1
fi
mkdir -p "$SKEIN_SYSROOT"
for f in .debs/*.deb; do dpkg -x "$f" "$SKEIN_SYSROOT" || { echo "gpu_env.sh: dpkg -x $f failed" >&2; return 1 2>/dev/null || exit 1; }; done
sr_lib=$SKEIN_SYSROOT/usr/lib/x86_64-linux-gnu
export CFLAGS="${CFLAGS:+$CFLAGS }-I$SKEIN_SYSROOT/usr/include -I$SKEIN_SYSROOT/usr/include/cjson"
export LDLIBS="${LDLIBS:+$LDLIBS }-L$sr_lib -Wl,-rpath,$sr_lib"
if ! pkg-config --exists openblas 2>/dev/null && [ ! -e /usr/include/cblas.h ] && [ ! -e /usr/include/x86_64-linux-gnu/cblas.h ]; then
    blas=openblas-openmp
    export BLAS_CFLAGS="-I$SKEIN_SYSROOT/usr/include/x86_64-linux-gnu/$blas"
    export BLAS_LIBS="-L$sr_lib/$blas -Wl,-rpath,$sr_lib/$blas -lopenblas"
    export LD_LIBRARY_PATH="$sr_lib/$blas:$sr_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
    export LD_LIBRARY_PATH="$sr_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ -z "$NCCL_HOME" ]; then
    NCCL_HOME=$(python3 -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null) && export NCCL_HOME
fi
if [ -z "$CUDNN_HOME" ]; then
    CUDNN_HOME=$(python3 -c 'import nvidia.cudnn; print(list(nvidia.cudnn.__path__)[0])' 2>/dev/null) && export CUDNN_HOME
fi
if [ -n "$CUDNN_HOME" ]; then
    export LD_LIBRARY_PATH="$CUDNN_HOME/lib:$LD_LIBRARY_PATH"
    # libnvrtc.so.* of the CUDA 13 wheels (nvidia/cu13/lib) or the CUDA 12 ones (nvidia/cuda_nvrtc/lib)
    nvrtc=$(python3 -c 'import glob, os, nvidia
print(":".join(sorted({os.path.dirname(f) for d in nvidia.__path__ for f in glob.glob(os.path.join(d, "*", "lib", "libnvrtc.so*"))})))' 2>/dev/null)
    [ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$nvrtc:$LD_LIBRARY_PATH"
fi
export NCCL_NVLS_ENABLE=0
echo "gpu_env.sh: sysroot $SKEIN_SYSROOT; BLAS ${BLAS_LIBS:-system}; NCCL_HOME ${NCCL_HOME:-none}; CUDNN_HOME ${CUDNN_HOME:-none}; NVRTC ${nvrtc:-not in the wheels}"
