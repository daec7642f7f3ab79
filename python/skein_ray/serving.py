"""`skein serve` as the replicas of a Ray Serve deployment.

Each replica (a SkeinReplica actor) starts one `skein serve --model DIR --host 127.0.0.1
--port 0` on its own resources: its GPUs through CUDA_VISIBLE_DEVICES (one skein engine per
GPU, --devices 0..G-1 --replicas G, unless the arguments say otherwise), otherwise --threads
set to its CPUs. It passes every HTTP request through to that server unchanged (the OpenAI
routes, /tokenize, /metrics, ...): streamed answers (text/event-stream) chunk by chunk as skein
writes them, others whole.
Ray Serve routes requests among the replicas, scales them by its autoscaling_config and calls
check_health, which asks skein's /health: a replica whose skein hangs fails it and Ray Serve
replaces it. A replica whose skein exits ends its own process at once, so that Ray Serve
replaces it as it would a lost node and stops routing to it now, not after several failed
checks (a replica answering 503s fast would otherwise draw more requests than a busy one).
A request that meets a skein gone before its answer started gets 503 with Retry-After: 1 and
x-should-retry: true, which the OpenAI clients retry; a stream cut after its first chunk is
not retried (the client has text already) and ends with an error.
"""

import os
import queue
import re
import subprocess
import threading
from typing import Any, AsyncIterator, Dict, List, Optional, Sequence

import aiohttp
import ray
from fastapi import FastAPI, Request
from ray import serve as ray_serve
from starlette.responses import JSONResponse, Response, StreamingResponse

from skein_ray import proc

# Headers that describe one connection, not the message: never copied between the two.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
        "content-length", "proxy-authorization", "proxy-authenticate", "content-encoding"}
_LISTENING = re.compile(r"listening on (http://\S+)")

_api = FastAPI()


def _retry_later(message: str) -> JSONResponse:
    """503 in OpenAI's error shape, marked for the client to retry."""
    return JSONResponse({"error": {"message": message, "type": "server_error", "param": None,
                                   "code": "replica_unavailable"}},
                        status_code=503, headers={"Retry-After": "1", "x-should-retry": "true"})


@ray_serve.ingress(_api)
class SkeinReplica:
    """One Ray Serve replica: a `skein serve` child and a pass-through to it."""

    def __init__(self, model: str, args: Sequence[str] = (), skein: Optional[str] = None,
                 start_timeout_s: float = 600, health_timeout_s: float = 5) -> None:
        """Starts skein serve for `model` with `args` added and waits (start_timeout_s at most)
        for it to listen; raises RuntimeError with its last output when it does not."""
        argv = [proc.find_skein(skein), "serve", "--model", model, "--host", "127.0.0.1", "--port", "0"]
        env: Dict[str, str] = {}
        gpus = [str(g) for g in ray.get_gpu_ids()]
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
            if "--devices" not in args:
                argv += ["--devices", ",".join(str(i) for i in range(len(gpus)))]
            if len(gpus) > 1 and "--replicas" not in args:
                argv += ["--replicas", str(len(gpus))]
        elif "--threads" not in args:
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
            argv += ["--threads", str(max(1, int(cpus)))]
        argv += list(args)
        self.health_timeout_s = health_timeout_s
        self.session: Optional[aiohttp.ClientSession] = None
        self.child: Optional[subprocess.Popen] = None
        self.up = threading.Event()        # set once serving: from then on, skein exiting ends us
        self.stopping = threading.Event()  # set when Ray Serve stops this replica
        started: "queue.Queue[str]" = queue.Queue()  # the URL, or why skein did not start
        # The child is started and read by one thread that lives exactly as long as it does:
        # proc.start's death signal follows the thread that started it.
        threading.Thread(target=self._run, args=(argv, env, started), daemon=True).start()
        try:
            got = started.get(timeout=start_timeout_s)
        except queue.Empty:
            got = f"no 'listening on' line within {start_timeout_s:g} s"
        if not got.startswith("http://"):
            if self.child is not None:
                proc.stop(self.child)
            raise RuntimeError(f"skein serve did not start: {got}")
        self.url = got
        self.up.set()

    def _run(self, argv: List[str], env: Dict[str, str], started: "queue.Queue[str]") -> None:
        """Thread body: starts skein serve, puts its URL (or why it failed) on `started`, copies
        its output to this replica's log until it exits; then, if it had been serving and Ray
        Serve is not stopping this replica, ends this process."""
        try:
            child = self.child = proc.start(argv, env)
        except OSError as e:
            started.put(f"{argv[0]}: {e}")
            return
        tail: List[str] = []

        def line(text: str) -> None:
            print(f"[skein serve] {text}", flush=True)
            tail[:] = (tail + [text])[-5:]
            m = _LISTENING.search(text)
            if m:
                started.put(m.group(1))

        status = proc.pump(child, line)
        started.put(f"exited with status {status}: " + " | ".join(tail))
        if self.up.is_set() and not self.stopping.is_set():
            print(f"skein serve exited with status {status}: ending this replica", flush=True)
            os._exit(1)

    def _client(self) -> aiohttp.ClientSession:
        """The HTTP session to skein, made on first use inside the replica's event loop."""
        if self.session is None:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10),
                auto_decompress=False)
        return self.session

    async def check_health(self) -> None:
        """Ray Serve's health check: raises when skein exited or /health does not answer 200."""
        assert self.child is not None  # set before __init__ returns
        status = self.child.poll()
        if status is not None:
            raise RuntimeError(f"skein serve exited with status {status}")
        timeout = aiohttp.ClientTimeout(total=self.health_timeout_s)
        async with self._client().get(self.url + "/health", timeout=timeout) as r:
            if r.status != 200:
                raise RuntimeError(f"skein serve's /health answered {r.status}")

    @_api.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def forward(self, path: str, request: Request) -> Response:
        """Passes the request to skein serve and its answer back (streamed when it is
        text/event-stream); 503 (retry) when skein cannot be reached or fails before answering."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        try:
            upstream = await self._client().request(request.method, f"{self.url}/{path}",
                                                    params=request.query_params, headers=headers,
                                                    data=await request.body())
            reply = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            if upstream.content_type != "text/event-stream":
                async with upstream:
                    body = await upstream.read()
                return Response(body, status_code=upstream.status, headers=reply)
        except aiohttp.ClientError as e:
            return _retry_later(f"this replica's skein serve is unavailable ({type(e).__name__}: {e})")

        async def chunks() -> AsyncIterator[bytes]:
            async with upstream:
                async for chunk in upstream.content.iter_any():
                    yield chunk

        return StreamingResponse(chunks(), status_code=upstream.status, headers=reply)

    def __del__(self) -> None:
        """Stops skein serve when Ray Serve stops the replica."""
        child = getattr(self, "child", None)
        if child is not None:
            self.stopping.set()
            proc.stop(child)


def serve_app(model: str, *, num_replicas: Optional[int] = None, min_replicas: Optional[int] = None,
        max_replicas: Optional[int] = None, target_ongoing: float = 2,
        autoscaling_config: Optional[Dict[str, Any]] = None, gpus_per_replica: float = 0,
        cpus_per_replica: float = 1, max_ongoing_requests: int = 64, args: Sequence[str] = (),
        skein: Optional[str] = None, health_check_period_s: float = 5,
        health_check_timeout_s: float = 10, start_timeout_s: float = 600,
        name: str = "skein") -> ray_serve.Application:
    """The Ray Serve application of `skein serve --model MODEL ARGS` replicas (ray.serve.run it).

    Either num_replicas (fixed; default 1) or min_replicas and max_replicas (Ray Serve
    autoscaling, aiming at target_ongoing requests per replica; autoscaling_config adds or
    overrides keys such as upscale_delay_s). model is a folder every node can read; skein the
    binary's path on the nodes (default: $SKEIN or PATH there). gpus_per_replica,
    cpus_per_replica: each replica's Ray resources. max_ongoing_requests: requests Ray Serve
    sends a replica at once (skein's --max-seqs and --max-queue bound what it runs and holds).
    """
    if num_replicas is not None and (min_replicas is not None or max_replicas is not None):
        raise ValueError("give num_replicas, or min_replicas and max_replicas, not both")
    options: Dict[str, Any] = {
        "name": name, "max_ongoing_requests": max_ongoing_requests,
        "health_check_period_s": health_check_period_s, "health_check_timeout_s": health_check_timeout_s,
        "ray_actor_options": {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica}}
    if min_replicas is not None or max_replicas is not None:
        if min_replicas is None or max_replicas is None or not 0 <= min_replicas <= max_replicas or max_replicas < 1:
            raise ValueError(f"autoscaling wants 0 <= min_replicas <= max_replicas, max_replicas >= 1 "
                             f"(got {min_replicas}, {max_replicas})")
        options["autoscaling_config"] = {"min_replicas": min_replicas, "max_replicas": max_replicas,
                                         "target_ongoing_requests": target_ongoing, **(autoscaling_config or {})}
    else:
        options["num_replicas"] = 1 if num_replicas is None else num_replicas
    return ray_serve.deployment(SkeinReplica, **options).bind(
        model, list(args), skein, start_timeout_s, health_check_timeout_s)


def run_app(app: ray_serve.Application, *, name: str = "skein", host: str = "127.0.0.1",
            port: int = 8000) -> str:
    """Starts Ray Serve's HTTP proxy on host:port and `app` (from serve_app) as application
    `name` at route "/"; returns http://host:port (OpenAI clients take that + "/v1"). Where
    Serve runs already, its proxy stays where it is: give the same host and port. Returns once
    the replicas are up; ray.serve.delete(name) stops them."""
    ray_serve.start(http_options={"host": host, "port": port})
    ray_serve.run(app, name=name, route_prefix="/")
    return f"http://{host}:{port}"


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> str:
    """run_app(serve_app(model, **options)): skein serve replicas for `model` behind Ray
    Serve's proxy on host:port; returns http://host:port."""
    return run_app(serve_app(model, **options), name=options.get("name", "skein"), host=host, port=port)
