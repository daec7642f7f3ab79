/* backend: creation by name (see backend.h). */
#include "backend/backend.h"

#include <string.h>

backend *backend_create(const char *name) {
    if (!strcmp(name, "cpu")) return backend_cpu_create();
    if (!strcmp(name, "cuda")) {
        sk_fail(SK_EARG, "--device cuda: this build has no CUDA backend yet (it comes with the CUDA issue); use --device cpu");
        return NULL;
    }
    sk_fail(SK_EARG, "unknown device '%s' (expected cpu or cuda)", name);
    return NULL;
}

void backend_free(backend *be) {
    if (!be) return;
    mem_free(be->impl);
    mem_free(be);
}
