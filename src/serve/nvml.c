/* nvml: the few NVML calls /metrics needs, bound by dlsym (see nvml.h). No NVML header is
 * needed: the declarations below follow NVML's documented ABI (nvml.h of the CUDA toolkit):
 * every call returns nvmlReturn_t, an int enum whose 0 is NVML_SUCCESS; nvmlDevice_t is an
 * opaque pointer; nvmlUtilization_t is {unsigned gpu, memory} in percent; nvmlMemory_t is
 * {unsigned long long total, free, used} in bytes. */
#include "serve/nvml.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>

typedef void *nvml_device_t;
typedef struct { unsigned int gpu, memory; } nvml_utilization_t;
typedef struct { unsigned long long total, free, used; } nvml_memory_t;

static struct {
    int (*init)(void);                                           /* nvmlInit_v2 */
    int (*count)(unsigned int *);                                /* nvmlDeviceGetCount_v2 */
    int (*handle)(unsigned int, nvml_device_t *);                /* nvmlDeviceGetHandleByIndex_v2 */
    int (*utilization)(nvml_device_t, nvml_utilization_t *);     /* nvmlDeviceGetUtilizationRates */
    int (*memory)(nvml_device_t, nvml_memory_t *);               /* nvmlDeviceGetMemoryInfo */
    int ok;
} nvml;

static pthread_once_t nvml_once = PTHREAD_ONCE_INIT;

/* Opens and initialises the library once; nvml.ok stays 0 when anything is missing. */
static void nvml_open(void) {
    const char *path = getenv("SKEIN_NVML_LIB") ? getenv("SKEIN_NVML_LIB") : "libnvidia-ml.so.1";
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) return;
    *(void **)&nvml.init = dlsym(h, "nvmlInit_v2");
    *(void **)&nvml.count = dlsym(h, "nvmlDeviceGetCount_v2");
    *(void **)&nvml.handle = dlsym(h, "nvmlDeviceGetHandleByIndex_v2");
    *(void **)&nvml.utilization = dlsym(h, "nvmlDeviceGetUtilizationRates");
    *(void **)&nvml.memory = dlsym(h, "nvmlDeviceGetMemoryInfo");
    if (!nvml.init || !nvml.count || !nvml.handle || !nvml.utilization || !nvml.memory || nvml.init() != 0) {
        dlclose(h);
        return;
    }
    nvml.ok = 1;   /* the library stays loaded for the process's life */
}

int nvml_sample(nvml_gpu *gpus, int cap) {
    pthread_once(&nvml_once, nvml_open);
    unsigned int n = 0;
    if (!nvml.ok || nvml.count(&n) != 0) return 0;
    int k = 0;
    for (unsigned int i = 0; i < n && k < cap; i++) {
        nvml_device_t d;
        nvml_utilization_t u;
        nvml_memory_t m;
        if (nvml.handle(i, &d) != 0 || nvml.utilization(d, &u) != 0 || nvml.memory(d, &m) != 0) continue;
        gpus[k++] = (nvml_gpu){.index = (int)i, .util = u.gpu / 100.0, .mem_used = m.used, .mem_total = m.total};
    }
    return k;
}
