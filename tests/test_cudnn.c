/* Tests of cuDNN's attention graphs (backend/cuda/cuda_cudnn.cu) that need no GPU: for the
 * shapes the models and the GPU tests use, the forward and both backward graphs (deterministic
 * and not), with and without a window, are built and cuDNN finalizes every tensor, operation
 * and the operation graph: their attributes, dtypes and dimensions are what cuDNN accepts. The
 * engines (heuristics, plans, numerics) need the device: test_mixed checks them on CUDA.
 * Skipped where skein is built without cuDNN. */
#include "test.h"

#include "backend/backend.h"
#ifdef SKEIN_HAVE_CUDNN
#include "backend/cuda/cuda.h"
#endif

TEST(cudnn_attention_graphs_finalize) {
#ifndef SKEIN_HAVE_CUDNN
    SKIP("skein is built without cuDNN");
#else
    static const struct { int B, T, NH, NKV, HS, W; } shapes[] = {
        {32, 1024, 12, 12, 64, 0},   /* GPT-2 124M, packed qkv */
        {4, 2048, 32, 4, 64, 0},     /* Llama 1.1B: GQA 8:1 */
        {1, 1024, 32, 8, 128, 0},    /* Llama-3 style: GQA 4:1, heads of 128 */
        {1, 512, 32, 8, 128, 256},   /* the same with a sliding window */
        {2, 66, 2, 2, 128, 0},       /* test_mixed's small cases */
        {4, 64, 4, 2, 16, 0},        /* gpu_train.sh's tiny Llama */
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int dir = 0; dir < 3; dir++) {   /* forward, backward, deterministic backward */
            const sk_status st = backend_cuda_cudnn_check_graph(shapes[i].B, shapes[i].T, shapes[i].NH, shapes[i].NKV,
                                                                shapes[i].HS, shapes[i].W, dir > 0, dir == 2);
            CHECK_MSG(st == SK_OK, "%s", sk_errmsg());
        }
    printf("  %zu shapes x 3 graphs finalized\n", sizeof shapes / sizeof shapes[0]);
#endif
}

TEST_MAIN()
