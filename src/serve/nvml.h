/* nvml: GPU utilisation and memory for /metrics, through NVIDIA's management library loaded
 * at run time (dlopen of libnvidia-ml.so.1, which the driver installs), so that skein builds
 * and runs where it is absent: then there are simply no GPU series.
 *
 *   nvml_gpu g[NVML_MAX_GPUS];
 *   int n = nvml_sample(g, NVML_MAX_GPUS);   // 0: no library, no driver or no device
 *
 * The devices are NVML's, in its order (the index label; CUDA's order may differ unless
 * CUDA_DEVICE_ORDER=PCI_BUS_ID). SKEIN_NVML_LIB names another library file (tests load a
 * stand-in with the same five entry points). */
#ifndef SKEIN_NVML_H
#define SKEIN_NVML_H

#define NVML_MAX_GPUS 64

typedef struct nvml_gpu {
    int index;                          /* NVML's device index */
    double util;                        /* fraction of the last sample period a kernel ran, 0..1 */
    unsigned long long mem_used, mem_total;   /* bytes */
} nvml_gpu;

/* Every device's figures now into gpus (at most cap); returns how many (0 when NVML is absent
 * or failed; a device that fails to answer is left out). The library is opened and initialised
 * once, on the first call; thread-safe. */
int nvml_sample(nvml_gpu *gpus, int cap);

#endif
