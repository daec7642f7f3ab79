/* backend/cuda: device memory that processes on one device share (backend.h's ipc_map and
 * ipc_unmap), through the driver's virtual memory API: physical memory made by cuMemCreate with
 * a POSIX file descriptor as its shareable handle (cuMemExportToShareableHandle; the other side
 * cuMemImportFromShareableHandle), mapped into addresses reserved for it (cuMemAddressReserve,
 * cuMemMap) and made readable and writable by the device (cuMemSetAccess). The runtime and the
 * driver API share the device's primary context, so the runtime's copies and kernels read it.
 *
 * The driver's functions come through the runtime (cudaGetDriverEntryPointByVersion at the
 * CUDA 12.0 ABI), so the program needs no libcuda at link time: the runtime has loaded the
 * driver already. Sizes are rounded up to the device's allocation granularity, the same way at
 * both ends. The allocation's generic handle is released as soon as it is mapped: the mapping
 * (and any descriptor) keeps the memory, so unmapping needs only the address and size.
 *
 * Lifetime, from the CUDA driver API reference: cuMemRelease -- "The memory allocation will be
 * freed when all outstanding mappings to the memory are unmapped and when all outstanding
 * references to the handle (including it's shareable counterparts) are also released";
 * cuMemExportToShareableHandle -- "Once all shareable handles are closed and the allocation is
 * released, the allocated memory referenced will be released back to the OS". So an open
 * descriptor keeps the memory after the process that made it unmapped it or exited.
 *
 * Also here, through the same lookup: cuda_alloc_end, the driver's bounds of the allocation a
 * device pointer lies in (cuMemGetAddressRange). */
#include "backend/cuda/cuda_impl.cuh"

#include <cuda.h>
#include <unistd.h>

#define CUDA_IPC_ABI 12000   /* the driver ABI asked for: CUDA 12.0's */
#define CUDA_IPC_HANDLE CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR

/* The driver functions used here; ok false when one could not be found. */
typedef struct cuda_drv {
    decltype(&cuGetErrorString) error_string;
    decltype(&cuMemGetAllocationGranularity) granularity;
    decltype(&cuMemCreate) create;
    decltype(&cuMemExportToShareableHandle) export_fd;
    decltype(&cuMemImportFromShareableHandle) import_fd;
    decltype(&cuMemAddressReserve) reserve;
    decltype(&cuMemAddressFree) address_free;
    decltype(&cuMemMap) map;
    decltype(&cuMemSetAccess) set_access;
    decltype(&cuMemUnmap) unmap;
    decltype(&cuMemRelease) release;
    bool ok;
} cuda_drv;

/* Stores driver function `name` at *fn; false when the driver has none at the ABI asked. */
template <typename F> static bool drv_sym(const char *name, F *fn) {
    void *p = NULL;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    const cudaError_t e = cudaGetDriverEntryPointByVersion(name, &p, CUDA_IPC_ABI, cudaEnableDefault, &q);
    *fn = (F)p;
    return e == cudaSuccess && q == cudaDriverEntryPointSuccess && p;
}

static cuda_drv drv_load(void) {
    cuda_drv d = {};
    d.ok = drv_sym("cuGetErrorString", &d.error_string) && drv_sym("cuMemGetAllocationGranularity", &d.granularity) &&
           drv_sym("cuMemCreate", &d.create) && drv_sym("cuMemExportToShareableHandle", &d.export_fd) &&
           drv_sym("cuMemImportFromShareableHandle", &d.import_fd) && drv_sym("cuMemAddressReserve", &d.reserve) &&
           drv_sym("cuMemAddressFree", &d.address_free) && drv_sym("cuMemMap", &d.map) &&
           drv_sym("cuMemSetAccess", &d.set_access) && drv_sym("cuMemUnmap", &d.unmap) &&
           drv_sym("cuMemRelease", &d.release);
    return d;
}

/* The driver's functions, looked up once (a function-local static: initialised once, safely
 * across threads). */
static const cuda_drv *drv(void) {
    static const cuda_drv d = drv_load();
    return &d;
}

static const char *drv_error(const cuda_drv *d, CUresult r) {
    const char *s = NULL;
    return d->error_string(r, &s) == CUDA_SUCCESS && s ? s : "unknown driver error";
}

/* A failed driver call that cannot fail on input (unmapping what was mapped) aborts. */
static void drv_check(const cuda_drv *d, CUresult r, const char *call) {
    if (r == CUDA_SUCCESS) return;
    fprintf(stderr, "CUDA driver error: %s: %s\n", call, drv_error(d, r));
    abort();
}

/* The allocation's properties on device dev and bytes rounded up to its granularity (*gran). */
static CUresult ipc_props(const cuda_drv *d, int dev, size_t *bytes, size_t *gran, CUmemAllocationProp *prop) {
    *prop = {};
    prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop->location.id = dev;
    prop->requestedHandleTypes = CUDA_IPC_HANDLE;
    const CUresult r = d->granularity(gran, prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
    if (r == CUDA_SUCCESS) *bytes = (*bytes + *gran - 1) / *gran * *gran;
    return r;
}

void *cuda_ipc_map(backend *be, size_t bytes, int *fd) {
    const cuda_drv *d = drv();
    if (!d->ok) {
        sk_fail(SK_EARG, "cuda: the driver's virtual memory functions cannot be reached (cudaGetDriverEntryPointByVersion)");
        return NULL;
    }
    const bool import = *fd >= 0;
    size_t size = bytes ? bytes : 1, gran = 0;
    CUmemAllocationProp prop;
    CUmemAccessDesc access = {};
    CUmemGenericAllocationHandle h = 0;
    CUdeviceptr p = 0;
    bool have = false, reserved = false, mapped = false;
    int out = -1;
    const char *step = "cuMemGetAllocationGranularity";
    CUresult r = ipc_props(d, be->device, &size, &gran, &prop);
    if (r != CUDA_SUCCESS) goto err;
    step = import ? "cuMemImportFromShareableHandle" : "cuMemCreate";
    r = import ? d->import_fd(&h, (void *)(uintptr_t)*fd, CUDA_IPC_HANDLE) : d->create(&h, size, &prop, 0);
    if (r != CUDA_SUCCESS) goto err;
    have = true;
    step = "cuMemExportToShareableHandle";
    if (!import && (r = d->export_fd(&out, h, CUDA_IPC_HANDLE, 0)) != CUDA_SUCCESS) goto err;
    step = "cuMemAddressReserve";
    if ((r = d->reserve(&p, size, gran, 0, 0)) != CUDA_SUCCESS) goto err;
    reserved = true;
    step = "cuMemMap";
    if ((r = d->map(p, size, 0, h, 0)) != CUDA_SUCCESS) goto err;
    mapped = true;
    step = "cuMemSetAccess";
    access.location = prop.location;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    if ((r = d->set_access(p, size, &access, 1)) != CUDA_SUCCESS) goto err;
    drv_check(d, d->release(h), "cuMemRelease");   /* the mapping keeps the memory (top of the file) */
    if (!import) *fd = out;
    return (void *)p;
err:
    sk_fail(r == CUDA_ERROR_OUT_OF_MEMORY ? SK_ENOMEM : SK_EIO, "cuda: %s %zu bytes of device memory shared between "
            "processes on device %d: %s: %s", import ? "mapping" : "allocating", size, be->device, step, drv_error(d, r));
    if (mapped) d->unmap(p, size);
    if (reserved) d->address_free(p, size);
    if (out >= 0) close(out);
    if (have) d->release(h);
    return NULL;
}

void cuda_ipc_unmap(backend *be, void *p, size_t bytes) {
    const cuda_drv *d = drv();
    size_t size = bytes ? bytes : 1, gran = 0;
    CUmemAllocationProp prop;
    drv_check(d, ipc_props(d, be->device, &size, &gran, &prop), "cuMemGetAllocationGranularity");
    CUDA_CHECK(cudaDeviceSynchronize());   /* nothing issued still reads it */
    drv_check(d, d->unmap((CUdeviceptr)p, size), "cuMemUnmap");
    drv_check(d, d->address_free((CUdeviceptr)p, size), "cuMemAddressFree");
}

const char *cuda_alloc_end(const void *p) {
    typedef decltype(&cuMemGetAddressRange) range_fn;
    static const range_fn range = [] {
        range_fn f = NULL;
        return drv_sym("cuMemGetAddressRange", &f) ? f : (range_fn)NULL;
    }();
    CUdeviceptr base = 0;
    size_t size = 0;
    if (!range || range(&base, &size, (CUdeviceptr)p) != CUDA_SUCCESS) return NULL;
    return (const char *)base + size;
}
