"""The command line: `python -m skein_ray train ... -- <skein train flags>` and
`python -m skein_ray serve --model DIR ... [-- <skein serve flags>]`. Everything after `--`
goes to skein unchanged. Exit status: 0 done, 1 failed, 2 bad flags."""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional, Sequence

import ray


def _parser() -> argparse.ArgumentParser:
    """The two subcommands' flags (the skein flags after `--` are split off before)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    common.add_argument("--skein", help="the skein binary's path on every node (default: $SKEIN, then PATH)")
    p = argparse.ArgumentParser(prog="python -m skein_ray",
                                description="Train and serve with the skein binary on a Ray cluster.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", parents=[common], help="skein train on N ranks, restarted with --resume on a failure",
                       usage="python -m skein_ray train --workers N [options] -- <skein train flags>")
    t.add_argument("--workers", type=int, required=True, help="ranks (one placement group bundle each)")
    t.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per rank (give --device cuda to skein)")
    t.add_argument("--cpus-per-worker", type=float, default=1, help="CPUs per rank (its OMP_NUM_THREADS)")
    t.add_argument("--max-failures", type=int, default=0, help="restarts from the newest checkpoint allowed")
    t.add_argument("--strategy", default="PACK", choices=["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"],
                   help="placement group strategy (default PACK)")
    s = sub.add_parser("serve", parents=[common], help="skein serve replicas behind Ray Serve's HTTP proxy",
                       usage="python -m skein_ray serve --model DIR (--num-replicas N | --min-replicas A "
                             "--max-replicas B) [options] [-- <skein serve flags>]")
    s.add_argument("--model", required=True, help="model folder, readable on every node")
    s.add_argument("--num-replicas", type=int, help="fixed number of replicas (default 1)")
    s.add_argument("--min-replicas", type=int, help="autoscaling: fewest replicas")
    s.add_argument("--max-replicas", type=int, help="autoscaling: most replicas")
    s.add_argument("--target-ongoing", type=float, default=2, help="autoscaling: requests per replica aimed at")
    s.add_argument("--gpus-per-replica", type=float, default=0, help="GPUs per replica")
    s.add_argument("--cpus-per-replica", type=float, default=1, help="CPUs per replica (skein's --threads)")
    s.add_argument("--max-ongoing-requests", type=int, default=64, help="requests in flight per replica")
    s.add_argument("--health-check-period", type=float, default=5, help="seconds between /health checks")
    s.add_argument("--host", default="127.0.0.1", help="Ray Serve's HTTP address (0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=8000, help="Ray Serve's HTTP port")
    s.add_argument("--name", default="skein", help="the Ray Serve application and deployment name")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line argv (default: sys.argv[1:]); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    ours, theirs = argv[:split], argv[split + 1:]
    parser = _parser()
    a = parser.parse_args(ours)
    if a.command == "train":
        if not theirs:
            parser.error("train: give skein train's flags after --")
        return _train(a, theirs)
    return _serve(parser, a, theirs)


def _train(a: argparse.Namespace, args: List[str]) -> int:
    """`train`: joins Ray and runs skein_ray.train; 0 when it finished."""
    from skein_ray.training import TrainError, train
    ray.init(address=a.address)
    try:
        r = train(args, a.workers, gpus_per_worker=a.gpus_per_worker, cpus_per_worker=a.cpus_per_worker,
                  max_failures=a.max_failures, skein=a.skein, strategy=a.strategy)
    except TrainError as e:
        print(f"skein_ray train: {e}", file=sys.stderr)
        return 1
    print(f"skein_ray train: done after {r.attempts} attempt(s), {r.failures} failure(s)", file=sys.stderr)
    return 0


def _serve(parser: argparse.ArgumentParser, a: argparse.Namespace, args: List[str]) -> int:
    """`serve`: checks the flags, joins Ray, starts the application, prints its URL and
    serves until interrupted (SIGINT); 0 then."""
    from skein_ray.serving import run_app, serve_app
    try:
        app = serve_app(a.model, num_replicas=a.num_replicas, min_replicas=a.min_replicas,
                        max_replicas=a.max_replicas, target_ongoing=a.target_ongoing,
                        gpus_per_replica=a.gpus_per_replica, cpus_per_replica=a.cpus_per_replica,
                        max_ongoing_requests=a.max_ongoing_requests, health_check_period_s=a.health_check_period,
                        args=args, skein=a.skein, name=a.name)
    except ValueError as e:
        parser.error(f"serve: {e}")
    ray.init(address=a.address)
    url = run_app(app, name=a.name, host=a.host, port=a.port)
    print(f"skein_ray serve: {a.name} on {url} (OpenAI base URL {url}/v1); Ctrl-C stops it", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve as ray_serve
        ray_serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
