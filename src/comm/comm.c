/* comm: picks and creates a communicator (comm.h) and reads the launch environment.
 *
 * The launcher is recognised by the variables it sets, most specific first: OpenMPI's
 * OMPI_COMM_WORLD_*, then PMIx/PMI (MPICH, srun --mpi=pmix), then a Slurm job step, then the
 * torchrun convention. A value that is present but wrong is an error naming the variable,
 * never a silent fallback to one process. */
#include "comm/comm.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm_impl.h"

size_t comm_chunk_limit(void) {
    const char *s = getenv("SKEIN_COMM_CHUNK");
    if (s && *s) {
        long long v = atoll(s);
        if (v > 0 && v < INT_MAX) return (size_t)v;
    }
    return (size_t)INT_MAX;
}

/* Parses the integer in variable `name` into *out (0 <= value <= INT_MAX). Returns 0 when the
 * variable is absent, 1 when read, -1 after recording SK_EARG. */
static int env_int(const char *name, int *out) {
    const char *s = getenv(name);
    if (!s) return 0;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < 0 || v > INT_MAX) {
        sk_fail(SK_EARG, "environment variable %s=%s: not a non-negative integer", name, s);
        return -1;
    }
    *out = (int)v;
    return 1;
}

const char *comm_launcher_name(comm_launcher l) {
    switch (l) {
    case COMM_LAUNCH_NONE: return "none";
    case COMM_LAUNCH_MPIRUN: return "mpirun";
    case COMM_LAUNCH_PMI: return "pmi";
    case COMM_LAUNCH_SLURM: return "srun";
    case COMM_LAUNCH_TORCHRUN: return "torchrun-style";
    }
    return "?";
}

/* Reads rank/size/local-rank variable names for one launcher; local may be absent (0). */
static sk_status env_triple(comm_env *env, const char *rank, const char *size, const char *local) {
    int got;
    if ((got = env_int(rank, &env->rank)) < 0) return SK_EARG;
    if (!got) return sk_fail(SK_EARG, "%s is set but %s is not", size, rank);
    if ((got = env_int(size, &env->world)) < 0) return SK_EARG;
    if (!got) return sk_fail(SK_EARG, "%s is set but %s is not", rank, size);
    if (env->world < 1) return sk_fail(SK_EARG, "%s=%d: the world needs at least one process", size, env->world);
    if (env->rank >= env->world)
        return sk_fail(SK_EARG, "%s=%d is not below %s=%d", rank, env->rank, size, env->world);
    if (local && env_int(local, &env->local_rank) < 0) return SK_EARG;
    return SK_OK;
}

sk_status comm_env_read(comm_env *env) {
    memset(env, 0, sizeof *env);
    env->world = 1;
    if (getenv("OMPI_COMM_WORLD_SIZE")) {
        env->launcher = COMM_LAUNCH_MPIRUN;
        return env_triple(env, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK");
    }
    if (getenv("PMI_SIZE") || getenv("PMIX_RANK")) {
        env->launcher = COMM_LAUNCH_PMI;
        if (getenv("PMI_SIZE")) return env_triple(env, "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID");
        /* PMIx publishes the size only through its API: MPI_Init learns it. */
        env->world = 0;
        return env_int("PMIX_RANK", &env->rank) < 0 ? SK_EARG : SK_OK;
    }
    if (getenv("SLURM_PROCID") && (getenv("SLURM_STEP_ID") || getenv("SLURM_STEPID"))) {
        env->launcher = COMM_LAUNCH_SLURM;
        return env_triple(env, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID");
    }
    if (getenv("WORLD_SIZE") || getenv("RANK")) {
        env->launcher = COMM_LAUNCH_TORCHRUN;
        SK_TRY(env_triple(env, "RANK", "WORLD_SIZE", "LOCAL_RANK"));
        if (env->world == 1) return SK_OK;
        const char *addr = getenv("MASTER_ADDR");
        if (!addr || !*addr)
            return sk_fail(SK_EARG, "WORLD_SIZE=%d but MASTER_ADDR is not set (the host of rank 0)", env->world);
        if (strlen(addr) >= sizeof env->master_addr)
            return sk_fail(SK_EARG, "MASTER_ADDR is longer than %zu characters", sizeof env->master_addr - 1);
        snprintf(env->master_addr, sizeof env->master_addr, "%s", addr);
        int got = env_int("MASTER_PORT", &env->master_port);
        if (got < 0) return SK_EARG;
        if (!got) return sk_fail(SK_EARG, "WORLD_SIZE=%d but MASTER_PORT is not set (a free TCP port on MASTER_ADDR)", env->world);
        if (env->master_port < 1 || env->master_port > 65535)
            return sk_fail(SK_EARG, "MASTER_PORT=%d: not a TCP port (1..65535)", env->master_port);
        return SK_OK;
    }
    return SK_OK;
}

const char *comm_auto_kind(const char *device) {
    comm_env env;
    if (comm_env_read(&env) != SK_OK) return NULL;
    bool cuda = device && !strcmp(device, "cuda");
    if (env.launcher == COMM_LAUNCH_NONE || env.world == 1) return "local";
    if (cuda) return "nccl";
    if (env.launcher == COMM_LAUNCH_TORCHRUN) {
        sk_fail(SK_EARG, "RANK/WORLD_SIZE=%d are set (torchrun-style launch), which skein supports on GPUs "
                "(NCCL, --device cuda); on CPUs launch with mpirun -n N, srun or --workers N", env.world);
        return NULL;
    }
    return "mpi";
}

sk_status comm_init(const char *kind, double timeout_s, comm **out) {
    *out = NULL;
    if (!(timeout_s > 0)) return sk_fail(SK_EARG, "comm timeout %g s: must be positive", timeout_s);
    if (!strcmp(kind, "auto")) {
        kind = comm_auto_kind("cpu");
        if (!kind) return SK_EARG;
    }
    if (!strcmp(kind, "local")) return comm_local_init(timeout_s, out);
    if (!strcmp(kind, "mpi")) {
#ifdef SKEIN_HAVE_MPI
        return comm_mpi_init(timeout_s, out);
#else
        return sk_fail(SK_EARG, "this skein is built without MPI (install libopenmpi-dev, or give MPICC=, and rebuild)");
#endif
    }
    if (!strcmp(kind, "nccl")) {
#ifdef SKEIN_HAVE_NCCL
        comm_env env;
        SK_TRY(comm_env_read(&env));
        return comm_nccl_init(&env, timeout_s, out);
#else
        return sk_fail(SK_EARG, "this skein is built without NCCL (needs nvcc and nccl.h; give NCCL_HOME= and rebuild)");
#endif
    }
    return sk_fail(SK_EARG, "communicator '%s': expected auto, local, mpi or nccl", kind);
}

void comm_free(comm *c) {
    if (c) c->ops->free(c);
}
