"""`skein train` across a Ray cluster, restarted from its newest checkpoint on a failure.

One attempt: a placement group of N bundles ({CPU: c, GPU: g} each), one _Rank actor per
bundle, each running `skein train ARGS` with the torchrun-style variables (docs/distributed.md):
RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE (the rank among, and the count of, the ranks on
its node, in rank order), MASTER_ADDR (rank 0's node address) and MASTER_PORT (a port free on
rank 0's node). Each rank's output goes to the driver line by line, "[rank R] " in front, and
rank 0 also prints "step N loss X" for each line skein appends to OUT/log.jsonl, so the losses
are in Ray's logs. Ray sets each actor's CUDA_VISIBLE_DEVICES to its own GPUs.

A failure is a rank exiting non-zero or its actor dying (its node lost, ray.kill): the whole
group is torn down (actors killed, their skein processes with them, the placement group
removed) and, up to max_failures times, started again with --resume, which continues from the
newest checkpoint in --out (so --out must be storage every node sees, and --save-every sets how
much work a failure costs). Exit status 2 (skein refused its arguments) is never retried.
"""
from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from skein_ray import proc

EXIT_BAD_ARGS = 2  # skein's status for a refused flag or file (src/cli/main.c)


class TrainError(RuntimeError):
    """The training job failed for good: refused arguments, or more failures than allowed."""


@dataclass
class TrainResult:
    """How a train() that succeeded went: attempts = failures + 1."""

    attempts: int
    failures: int


def flag_value(args: Sequence[str], flag: str) -> Optional[str]:
    """The value after the last `flag` in args (skein's `--flag VALUE` form), or None."""
    value = None
    for i, a in enumerate(args[:-1]):
        if a == flag:
            value = args[i + 1]
    return value


def newest_checkpoint_step(out: str) -> int:
    """The step of the newest OUT/checkpoint-N (skein commits them whole, by rename), 0 if none."""
    try:
        names = os.listdir(out)
    except OSError:
        return 0
    return max((int(m.group(1)) for m in map(re.compile(r"checkpoint-(\d+)$").match, names) if m), default=0)


def rank_env(nodes: Sequence[str], master_addr: str, master_port: int) -> List[Dict[str, str]]:
    """The torchrun-style variables of each rank, given the node id of each rank's actor."""
    per_node: Dict[str, int] = {}
    local = []
    for node in nodes:
        local.append(per_node.get(node, 0))
        per_node[node] = local[-1] + 1
    return [{"RANK": str(r), "WORLD_SIZE": str(len(nodes)), "LOCAL_RANK": str(local[r]),
             "LOCAL_WORLD_SIZE": str(per_node[node]), "MASTER_ADDR": master_addr,
             "MASTER_PORT": str(master_port)} for r, node in enumerate(nodes)]


def _follow_losses(path: str, after_step: int, done: threading.Event) -> None:
    """Prints "[rank 0] step N loss X" for each line of skein's log.jsonl at `path` with a step
    above after_step and above every step printed so far, polling each second until `done` is
    set (then one last read). The file as it was before skein started is not followed: skein
    truncates it (fresh run) or replaces it (resume), which changes its modification time or
    its inode; a replaced or shortened file is read again from its start."""
    def ident(st: os.stat_result) -> Tuple[int, int]:
        return st.st_ino, st.st_mtime_ns

    try:
        stale: Optional[Tuple[int, int]] = ident(os.stat(path))
    except FileNotFoundError:
        stale = None
    inode, offset, last = -1, 0, after_step
    while True:
        finished = done.wait(1.0)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None and ident(st) != stale:
            stale = None
            if st.st_ino != inode or st.st_size < offset:
                inode, offset = st.st_ino, 0
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            data = data[:data.rfind(b"\n") + 1]
            offset += len(data)
            for line in data.splitlines():
                entry = json.loads(line)
                if entry["step"] > last:
                    last = entry["step"]
                    print(f"[rank 0] step {last} loss {entry['loss']:.6g}", flush=True)
        if finished:
            return


class _Rank:
    """One rank's actor: runs `skein train` once with the variables it is given."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def place(self) -> Tuple[str, str]:
        """(node id, node IP address) of this actor."""
        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()

    def free_port(self) -> int:
        """A port free on this actor's node (for MASTER_PORT)."""
        return proc.free_port()

    def run(self, skein: Optional[str], args: List[str], env: Dict[str, str]) -> int:
        """Runs `skein train ARGS` with env added, each output line printed with this rank in
        front; returns its exit status (negative: the signal that ended it)."""
        binary = proc.find_skein(skein)
        out = flag_value(args, "--out")
        done = threading.Event()
        follower = None
        if self.rank == 0 and out:
            after = newest_checkpoint_step(out) if "--resume" in args else 0
            follower = threading.Thread(target=_follow_losses, daemon=True,
                                        args=(os.path.join(out, "log.jsonl"), after, done))
            follower.start()
        child = proc.start([binary, "train", *args], env)
        status = proc.pump(child, lambda text: print(f"[rank {self.rank}] {text}", flush=True))
        if follower is not None:
            done.set()
            follower.join()
        return status


_RankActor = ray.remote(_Rank)


def _attempt(args: List[str], workers: int, bundle: Dict[str, float], strategy: str,
             skein: Optional[str], env: Mapping[str, str], place_timeout_s: float) -> Tuple[int, str]:
    """Runs the group once; returns (0, "") when every rank exited 0, else the first failure's
    status (-1 for a dead actor) and what happened. Tears the group down either way."""
    group = placement_group([dict(bundle)] * workers, strategy=strategy)
    actors: list = []
    try:
        try:
            ray.get(group.ready(), timeout=place_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TrainError(f"could not place {workers} bundles of {bundle} ({strategy}) within "
                             f"{place_timeout_s:g} s: the cluster lacks the resources") from None
        actors = [_RankActor.options(num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0),
                                scheduling_strategy=PlacementGroupSchedulingStrategy(
                                    group, placement_group_bundle_index=r)).remote(r)
                  for r in range(workers)]
        try:
            places = ray.get([a.place.remote() for a in actors])
            port = ray.get(actors[0].free_port.remote())
        except ray.exceptions.RayActorError as e:
            return -1, f"an actor died while starting: {e}"
        ranks = rank_env([node for node, _ in places], places[0][1], port)
        running = {a.run.remote(skein, args, {**env, **e}): r for r, (a, e) in enumerate(zip(actors, ranks))}
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            rank = running.pop(ready[0])
            try:
                status = ray.get(ready[0])
            except ray.exceptions.RayActorError as e:
                return -1, f"rank {rank}'s actor died: {e}"
            except ray.exceptions.RayTaskError as e:  # no skein binary there, say: not retried
                raise TrainError(f"rank {rank} could not run skein train: {e.cause!r}") from None
            if status != 0:
                return status, f"rank {rank}'s skein train exited with status {status}"
        return 0, ""
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)
        remove_placement_group(group)


def train(args: Sequence[str], workers: int, *, gpus_per_worker: float = 0, cpus_per_worker: float = 1,
          max_failures: int = 0, skein: Optional[str] = None, strategy: str = "PACK",
          env: Optional[Mapping[str, str]] = None, place_timeout_s: float = 600) -> TrainResult:
    """Trains with `skein train ARGS` on `workers` ranks of a Ray cluster (ray.init() first).

    args: skein train's flags (--model, --data, --out, ...; --device cuda for GPUs).
    gpus_per_worker, cpus_per_worker: each rank's bundle. strategy: the placement group's
    (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD). skein: the binary's path on the nodes (default:
    $SKEIN or PATH there). env: more variables for every rank (OMP_NUM_THREADS defaults to
    the rank's CPUs). max_failures: restarts allowed, each with --resume.
    Returns the attempts made; raises TrainError when skein refuses its arguments or cannot be
    started, when the bundles cannot be placed within place_timeout_s, or after
    max_failures + 1 failures.
    """
    if workers < 1:
        raise ValueError(f"workers = {workers}: need at least 1")
    bundle = {"CPU": float(cpus_per_worker)}
    if gpus_per_worker:
        bundle["GPU"] = float(gpus_per_worker)
    env = {"OMP_NUM_THREADS": str(max(1, int(cpus_per_worker))), **(env or {})}
    args = list(args)
    failures = 0
    while True:
        status, why = _attempt(args, workers, bundle, strategy, skein, env, place_timeout_s)
        if status == 0:
            return TrainResult(attempts=failures + 1, failures=failures)
        if status == EXIT_BAD_ARGS:
            raise TrainError(f"{why}: skein refused its arguments (see the rank's output above)")
        failures += 1
        if failures > max_failures:
            raise TrainError(f"{why}; giving up after {failures} failure(s) (max_failures={max_failures})")
        print(f"skein_ray: {why}; restarting from the newest checkpoint "
              f"(failure {failures} of at most {max_failures})", flush=True)
        if "--resume" not in args:
            args.append("--resume")
