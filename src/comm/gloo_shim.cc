/* gloo_shim: gloo's collectives behind the C functions of gloo_shim.h.
 *
 * The TCP device and a full-mesh context come from gloo; the rendezvous goes through our
 * TCP store (store.h) by way of StoreAdapter, gloo's Store interface over store_set/get,
 * scoped by gloo's own PrefixStore. All-reduce, all-gather, broadcast and barrier are gloo's
 * option-struct calls (sizes in size_t; timeout per call); reduce-scatter is gloo's
 * ReduceScatterHalvingDoubling (in place; int counts, so comm_gloo.c splits large ones).
 * Every gloo exception is caught here and becomes a return code and a message: nothing C++
 * leaves this file. Only the thread that opened a shim calls it. */
#include "comm/gloo_shim.h"

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/reduce_scatter.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

namespace {

/* gloo's rendezvous Store over ours; failures become gloo's own IoException. The store's
 * timeout bounds every wait (gloo's timeout argument is the same number). */
class StoreAdapter : public gloo::rendezvous::Store {
  public:
    explicit StoreAdapter(store *st) : st_(st) {}

    void set(const std::string &key, const std::vector<char> &data) override {
        if (store_set(st_, key.c_str(), data.data(), data.size()) != SK_OK) throw gloo::IoException(sk_errmsg());
    }

    std::vector<char> get(const std::string &key) override {
        void *p = nullptr;
        size_t n = 0;
        if (store_get(st_, key.c_str(), &p, &n) != SK_OK) throw gloo::IoException(sk_errmsg());
        std::vector<char> v(static_cast<char *>(p), static_cast<char *>(p) + n);
        free(p);
        return v;
    }

    void wait(const std::vector<std::string> &keys) override {
        for (const auto &k : keys) get(k);
    }

    void wait(const std::vector<std::string> &keys, const std::chrono::milliseconds &) override { wait(keys); }

  private:
    store *st_;
};

/* A bf16 element for gloo's typed reduce-scatter. */
struct Bf16 {
    uint16_t bits;
};

void bf16_acc(Bf16 *acc, const Bf16 *in, size_t n) {
    comm_bf16_sum(reinterpret_cast<uint16_t *>(acc), reinterpret_cast<const uint16_t *>(in), n);
}

const gloo::ReductionFunction<Bf16> bf16_reduction(gloo::CUSTOM, &bf16_acc);

size_t elem_size(gloo_shim_elem e) { return e == GLOO_SHIM_BF16 ? 2 : e == GLOO_SHIM_F64 ? 8 : 4; }

/* acc(n) += in(n) of element type e. */
void sum_into(void *acc, const void *in, size_t n, gloo_shim_elem e) {
    if (e == GLOO_SHIM_BF16) {
        comm_bf16_sum(static_cast<uint16_t *>(acc), static_cast<const uint16_t *>(in), n);
    } else if (e == GLOO_SHIM_F64) {
        double *a = static_cast<double *>(acc);
        const double *b = static_cast<const double *>(in);
        for (size_t i = 0; i < n; i++) a[i] += b[i];
    } else {
        float *a = static_cast<float *>(acc);
        const float *b = static_cast<const float *>(in);
        for (size_t i = 0; i < n; i++) a[i] += b[i];
    }
}

/* gloo's reduction callback form: out(n) = a(n) + b(n), where out may be a or b. */
gloo::AllreduceOptions::Func reduction(gloo_shim_elem e) {
    return [e](void *out, const void *a, const void *b, size_t n) {
        if (out == b) std::swap(a, b);
        if (out != a) memcpy(out, a, n * elem_size(e));
        sum_into(out, b, n, e);
    };
}

/* Runs fn, turning gloo's exceptions into a return code and a message naming op. */
template <typename F> gloo_shim_rc guarded(const char *op, F fn) {
    try {
        fn();
        return GLOO_SHIM_OK;
    } catch (const std::exception &ex) {
        const char *what = ex.what();
        bool timeout = strstr(what, "Timed out") || strstr(what, "timed out") || strstr(what, "timeout");
        sk_fail(SK_ECOMM, "%s: gloo: %s", op, what);
        return timeout ? GLOO_SHIM_TIMEOUT : GLOO_SHIM_FAILED;
    }
}

}  // namespace

struct gloo_shim {
    std::shared_ptr<gloo::transport::Device> dev;
    std::shared_ptr<gloo::rendezvous::Context> ctx;
};

gloo_shim_rc gloo_shim_open(store *st, int rank, int world, const char *addr, const char *iface, double timeout_s,
                            gloo_shim **out) {
    *out = nullptr;
    gloo_shim *g = new (std::nothrow) gloo_shim;
    if (!g) {
        sk_fail(SK_ENOMEM, "gloo: out of memory");
        return GLOO_SHIM_FAILED;
    }
    gloo_shim_rc rc = guarded("gloo: connecting the ranks", [&] {
        gloo::transport::tcp::attr attr;
        if (iface) attr.iface = iface;
        else attr.hostname = addr;
        g->dev = gloo::transport::tcp::CreateDevice(attr);
        g->ctx = std::make_shared<gloo::rendezvous::Context>(rank, world);
        g->ctx->setTimeout(std::chrono::milliseconds(static_cast<long long>(timeout_s * 1000)));
        StoreAdapter adapter(st);
        gloo::rendezvous::PrefixStore prefixed("gloo", adapter);
        g->ctx->connectFullMesh(prefixed, g->dev);
    });
    if (rc != GLOO_SHIM_OK) {
        delete g;
        return rc;
    }
    *out = g;
    return GLOO_SHIM_OK;
}

void gloo_shim_free(gloo_shim *g) { delete g; }

template <typename T> static void all_reduce_typed(gloo_shim *g, void *buf, size_t n, gloo_shim_elem e, uint32_t tag) {
    gloo::AllreduceOptions o(g->ctx);
    o.setOutput(static_cast<T *>(buf), n);
    o.setReduceFunction(reduction(e));
    o.setTag(tag);
    gloo::allreduce(o);
}

gloo_shim_rc gloo_shim_all_reduce(gloo_shim *g, void *buf, size_t n, gloo_shim_elem e, uint32_t tag) {
    return guarded("all_reduce", [&] {
        if (e == GLOO_SHIM_BF16) all_reduce_typed<uint16_t>(g, buf, n, e, tag);
        else if (e == GLOO_SHIM_F64) all_reduce_typed<double>(g, buf, n, e, tag);
        else all_reduce_typed<float>(g, buf, n, e, tag);
    });
}

/* gloo's halving-doubling reduce-scatter of buf(world*n) in place; the algorithm keeps its
 * own slots, so tags do not apply. */
template <typename T> static void reduce_scatter_typed(gloo_shim *g, void *buf, size_t n, const gloo::ReductionFunction<T> *fn) {
    const int world = g->ctx->size;
    std::vector<T *> ptrs(1, static_cast<T *>(buf));
    gloo::ReduceScatterHalvingDoubling<T> rs(g->ctx, ptrs, static_cast<int>(world * n), std::vector<int>(world, static_cast<int>(n)), fn);
    rs.run();
}

gloo_shim_rc gloo_shim_reduce_scatter(gloo_shim *g, void *buf, size_t n, gloo_shim_elem e, uint32_t tag) {
    (void)tag;
    return guarded("reduce_scatter", [&] {
        if (e == GLOO_SHIM_BF16) reduce_scatter_typed<Bf16>(g, buf, n, &bf16_reduction);
        else reduce_scatter_typed<float>(g, buf, n, gloo::ReductionFunction<float>::sum);
    });
}

gloo_shim_rc gloo_shim_all_gather(gloo_shim *g, const void *send, void *recv, size_t bytes, uint32_t tag) {
    return guarded("all_gather", [&] {
        gloo::AllgatherOptions o(g->ctx);
        if (send) o.setInput(static_cast<char *>(const_cast<void *>(send)), bytes);
        o.setOutput(static_cast<char *>(recv), bytes * static_cast<size_t>(g->ctx->size));
        o.setTag(tag);
        gloo::allgather(o);
    });
}

gloo_shim_rc gloo_shim_broadcast(gloo_shim *g, void *buf, size_t bytes, int root, uint32_t tag) {
    return guarded("broadcast", [&] {
        gloo::BroadcastOptions o(g->ctx);
        o.setOutput(static_cast<char *>(buf), bytes);
        o.setRoot(root);
        o.setTag(tag);
        gloo::broadcast(o);
    });
}

gloo_shim_rc gloo_shim_barrier(gloo_shim *g, uint32_t tag) {
    return guarded("barrier", [&] {
        gloo::BarrierOptions o(g->ctx);
        o.setTag(tag);
        gloo::barrier(o);
    });
}
