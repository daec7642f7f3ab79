"""skein_ray against the skein binary on a local Ray instance (CPU): run by tests/cli_ray.sh as
`check_ray.py SKEIN SCRATCH_DIR` with Ray, Ray Serve, the OpenAI client and skein_ray
installed. Prints one PASS, FAIL or SKIP line per case:

  ray_serve_*   2 replicas of a tiny random Llama: greedy completions equal `skein generate`'s
                text, streamed (completions and chat) equal to whole; one replica's skein
                SIGKILLed under load of 4 clients: no request lost (the OpenAI client's
                default retries), every answer still the greedy text, a new replica with a new
                skein up within 60 s; autoscaling from 1 to 2 replicas under load; a client
                leaving a long request (streamed or whole) has it cancelled in skein.
  ray_cli_*     `python -m skein_ray serve` (joining this Ray instance) answers with the greedy
                text and exits 0 on SIGINT; `python -m skein_ray train` trains 1 rank to
                plain skein train's losses and exits 1 when skein refuses a flag.
  ray_train_*   a tiny GPT-2 (checkpoints every 5 steps). One Ray rank whose skein is
                SIGKILLed after step 7: the job restarts with --resume and ends with the
                losses of plain `skein train`, bit for bit, each in Ray's logs; refused flags
                and a missing binary fail at once, not retried. Two ranks: losses within 1e-5 relative of `skein
                train --workers 2` (mpirun; one process where MPI is missing); rank 1
                SIGKILLed after step 7: restarted, the same losses, bit for bit, as the
                uninterrupted Ray run. The two-rank cases are skipped, with skein's message,
                where skein refuses torchrun-style launches on CPUs.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Dict, List, Optional

import openai
import ray
from ray import serve as ray_serve

import skein_ray
import tiny_tokens
from pycheck import case

SK = os.path.abspath(sys.argv[1])
T = sys.argv[2]
ADDRESS = ""  # the local Ray instance's, for `python -m skein_ray --address` (set by main)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes(argv1: str, marker: str) -> Dict[int, List[str]]:
    """pid -> argv of this machine's `skein ARGV1 ...` processes whose argv holds `marker`."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if len(argv) > 2 and argv[0] == SK and argv[1] == argv1 and marker in argv:
            found[int(pid)] = argv
    return found


def environ(pid: int) -> Dict[str, str]:
    """The process's environment at its start."""
    raw = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
    return dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)


def parent(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])


# ---- serving ----

def serve_cases() -> None:
    model = os.path.join(T, "m")
    subprocess.run([SK, "init", "--arch", "llama", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                    "--dim", "64", "--context", "128", "--tokenizer", "tests/fixtures/tok2/llama3.json",
                    "--out", model], check=True, capture_output=True)
    gen = subprocess.run([SK, "generate", "--model", model, "--prompt", "static int", "--max-tokens", "12",
                          "--temperature", "0"], check=True, capture_output=True).stdout
    greedy = gen[len(b"static int"):-1].decode("utf-8", "replace")
    state = {}
    port = free_port()

    def start() -> Optional[str]:
        state["url"] = skein_ray.serve(model, num_replicas=2, port=port, skein=SK,
                                       health_check_period_s=1, args=["--chat-template", "llama3"])
        servers = processes("serve", model)
        if len(servers) != 2 or len({parent(p) for p in servers}) != 2:
            return f"want 2 skein serve processes under 2 replicas, found {servers}"
        state["client"] = openai.OpenAI(base_url=state["url"] + "/v1", api_key="none")
        return None

    case("ray_serve_start_2_replicas", start)
    if "client" not in state:
        return
    client = state["client"]

    def complete() -> str:
        r = client.completions.create(model="m", prompt="static int", max_tokens=12, temperature=0)
        assert r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length", r
        return r.choices[0].text

    def equals_generate() -> Optional[str]:
        texts = [complete() for _ in range(4)]
        return None if texts == [greedy] * 4 else f"served {texts}, generate {greedy!r}"

    def stream() -> Optional[str]:
        chunks = list(client.completions.create(model="m", prompt="static int", max_tokens=12,
                                                temperature=0, stream=True))
        text = "".join(c.choices[0].text for c in chunks)
        if text != greedy or chunks[-1].choices[0].finish_reason != "length" or len(chunks) < 2:
            return f"streamed {text!r} in {len(chunks)} chunks, generate {greedy!r}"
        msgs = [{"role": "user", "content": "hi"}]
        whole = client.chat.completions.create(model="m", messages=msgs, max_tokens=8, temperature=0)
        parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="m", messages=msgs, max_tokens=8, temperature=0, stream=True) if c.choices]
        if "".join(parts) != whole.choices[0].message.content:
            return f"chat streamed {parts}, whole {whole.choices[0].message.content!r}"
        return None

    case("ray_serve_completion_equals_generate", equals_generate)
    case("ray_serve_stream_equals_whole", stream)

    def replica_killed() -> Optional[str]:
        answers: List[str] = []
        errors: List[str] = []
        done = threading.Event()

        def load() -> None:
            while not done.is_set():
                try:
                    answers.append(complete())
                except Exception as e:  # a lost request
                    errors.append(repr(e))

        clients = [threading.Thread(target=load) for _ in range(4)]
        for c in clients:
            c.start()
        time.sleep(2)
        before = processes("serve", os.path.join(T, "m"))
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        t0, replaced = time.time(), False
        while time.time() - t0 < 60 and not replaced:
            time.sleep(0.2)
            now = processes("serve", os.path.join(T, "m"))
            deployment = ray_serve.status().applications["skein"].deployments["skein"]
            replaced = len(now) == 2 and victim not in now and deployment.replica_states == {"RUNNING": 2}
        time.sleep(1)
        done.set()
        for c in clients:
            c.join()
        wrong = [a for a in answers if a != greedy]
        if errors or wrong or not replaced:
            return (f"{len(errors)} lost of {len(errors) + len(answers)} ({errors[:3]}), {len(wrong)} wrong, "
                    f"replaced: {replaced} within {time.time() - t0:.0f} s")
        if stream() is not None:
            return "no streamed answer after the replacement"
        print(f"# {len(answers)} requests, the replica replaced in {time.time() - t0:.1f} s", flush=True)
        return None

    case("ray_serve_replica_killed_no_lost_request", replica_killed)
    ray_serve.delete("skein")

    def autoscale() -> Optional[str]:
        url = skein_ray.serve(model, min_replicas=1, max_replicas=2, target_ongoing=1, skein=SK, name="auto", port=port,
                              autoscaling_config={"upscale_delay_s": 0, "metrics_interval_s": 0.5,
                                                  "look_back_period_s": 1})
        auto = openai.OpenAI(base_url=url + "/v1", api_key="none")
        done = threading.Event()

        def load() -> None:
            while not done.is_set():
                auto.completions.create(model="m", prompt="a", max_tokens=40, extra_body={"ignore_eos": True})

        clients = [threading.Thread(target=load) for _ in range(4)]
        for c in clients:
            c.start()
        t0, states = time.time(), {}  # type: float, Dict[str, int]
        while time.time() - t0 < 60 and states != {"RUNNING": 2}:
            time.sleep(0.5)
            states = ray_serve.status().applications["auto"].deployments["auto"].replica_states
        done.set()
        for c in clients:
            c.join()
        ray_serve.delete("auto")
        return None if states == {"RUNNING": 2} else f"replicas {states} after 60 s of load"

    case("ray_serve_autoscales_1_to_2", autoscale)

    def disconnect() -> Optional[str]:
        slow = os.path.join(T, "slow")
        subprocess.run([SK, "init", "--arch", "llama", "--layers", "4", "--heads", "4", "--kv-heads", "2", "--dim",
                        "256", "--context", "4096", "--tokenizer", "tests/fixtures/tok2/llama3.json", "--out", slow],
                       check=True, capture_output=True)
        url = skein_ray.serve(slow, num_replicas=1, skein=SK, name="slow", port=port)

        def metric(name: str) -> float:
            text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
            return sum(float(line.split()[-1]) for line in text.splitlines() if line.split("{")[0].split(" ")[0] == name)

        why = None
        for stream in (True, False):
            g0 = metric("skein_generation_tokens_total")
            body = json.dumps({"prompt": "a", "max_tokens": 4000, "ignore_eos": True, "stream": stream}).encode()
            try:  # the client leaves after 1 s: waiting for the whole answer, or reading the stream
                with urllib.request.urlopen(urllib.request.Request(url + "/v1/completions", body), timeout=1) as r:
                    t0 = time.time()
                    while time.time() - t0 < 1 and r.read1(4096):
                        pass
            except OSError:
                pass
            t0 = time.time()
            while metric("skein_running_sequences") and time.time() - t0 < 5:
                time.sleep(0.1)
            tokens, blocks = metric("skein_generation_tokens_total") - g0, metric("skein_kv_blocks_used")
            if not 0 < tokens < 4000 or blocks or metric("skein_running_sequences"):
                why = f"stream={stream}: {tokens:g} tokens generated, {blocks:g} KV blocks held after the client left"
        ray_serve.delete("slow")
        return why

    case("ray_serve_disconnect_cancels", disconnect)
    ray_serve.shutdown()

    def serve_cli() -> Optional[str]:
        cli = subprocess.Popen([sys.executable, "-m", "skein_ray", "serve", "--address", ADDRESS, "--skein", SK,
                                "--model", model, "--num-replicas", "1", "--port", str(port), "--",
                                "--chat-template", "llama3"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
        try:
            assert cli.stderr is not None
            said = ""
            while "OpenAI base URL" not in said:
                said = cli.stderr.readline()
                assert said, "python -m skein_ray serve ended without printing its URL"
            url = f"http://127.0.0.1:{port}"
            assert f"{url}/v1" in said, said
            assert urllib.request.urlopen(url + "/health", timeout=10).status == 200
            text = openai.OpenAI(base_url=url + "/v1", api_key="none").completions.create(
                model="m", prompt="static int", max_tokens=12, temperature=0).choices[0].text
            assert text == greedy, (text, greedy)
        finally:
            cli.send_signal(signal.SIGINT)
            status = cli.wait(timeout=60)
        return None if status == 0 else f"exit status {status} after SIGINT"

    case("ray_cli_serve", serve_cli)


# ---- training ----

def losses(run: str) -> List[float]:
    return [json.loads(line)["loss"] for line in open(os.path.join(run, "log.jsonl"))]


def torchrun_refusal(flags: List[str]) -> Optional[str]:
    """skein's message when it refuses a 2-rank torchrun-style launch on the CPU, else None."""
    port = str(free_port())
    ranks = [subprocess.Popen([SK, "train", *flags, "--out", os.path.join(T, "probe"), "--steps", "1"],
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    errs = [p.communicate(timeout=60)[1] for p in ranks]
    refused = [e for p, e in zip(ranks, errs) if p.returncode == 2 and "torchrun-style" in e]
    return refused[0].strip().splitlines()[-1] if refused else None


def killed(flags: List[str], workers: int, rank: int, out: str, ref: str) -> Optional[str]:
    """Trains on `workers` Ray ranks into `out`, SIGKILLs `rank`'s skein once log.jsonl has 7
    steps (rank 0 sleeps 60 ms per micro-batch, so that this is mid-run): the job must restart
    once and end with ref's losses, bit for bit."""
    log, victims = os.path.join(out, "log.jsonl"), []  # type: str, List[int]

    def kill_after_step7() -> None:
        t0 = time.time()
        while time.time() - t0 < 120:
            if os.path.exists(log) and len(open(log).readlines()) >= 7:
                victims.extend(p for p in processes("train", out) if environ(p).get("RANK") == str(rank))
                for p in victims:
                    os.kill(p, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_step7)
    killer.start()
    r = skein_ray.train(flags + ["--out", out, "--debug-slow-rank", "0:60"], workers, skein=SK, max_failures=1)
    killer.join()
    if len(victims) != 1 or r.failures != 1:
        return f"killed {victims}, {r}"
    a, b = losses(ref), losses(out)
    return None if a == b else f"losses (uninterrupted, restarted) differ: {list(zip(a, b))}"


def in_ray_logs(text: str) -> bool:
    """Whether a Ray worker's log (stdout) holds text."""
    logs = os.path.join(T, "ray-tmp", "session_latest", "logs")
    return any(text in open(os.path.join(logs, f), errors="replace").read()
               for f in os.listdir(logs) if f.startswith("worker-") and f.endswith(".out"))


def train_cases() -> None:
    tiny_tokens.write(os.path.join(T, "tokens.bin"))
    subprocess.run([SK, "init", "--arch", "gpt2", "--layers", "2", "--heads", "2", "--dim", "16", "--context", "32",
                    "--vocab-size", "29", "--out", os.path.join(T, "init")], check=True, capture_output=True)
    flags = ["--model", os.path.join(T, "init"), "--data", os.path.join(T, "tokens.bin"), "--steps", "20",
             "--batch", "7", "--micro-batch", "2", "--seq", "16", "--lr", "3e-3", "--quiet", "--save-every", "5"]
    one = os.path.join(T, "one")
    subprocess.run([SK, "train", *flags, "--out", one], check=True, capture_output=True, timeout=300)

    def one_rank() -> Optional[str]:
        why = killed(flags, 1, 0, os.path.join(T, "one-killed"), one)
        want = f"[rank 0] step 20 loss {losses(one)[-1]:.6g}"
        return why or (None if in_ray_logs(want) else f"no '{want}' in Ray's worker logs")

    def refused() -> Optional[str]:
        t0 = time.time()
        try:
            skein_ray.train(flags + ["--out", os.path.join(T, "bad"), "--lr", "fast"], 2, skein=SK, max_failures=3)
        except skein_ray.TrainError as e:
            if "refused" not in str(e) or time.time() - t0 > 60:
                return f"{e} after {time.time() - t0:.0f} s"
        else:
            return "a bad --lr was accepted"
        try:
            skein_ray.train(flags + ["--out", os.path.join(T, "bad")], 1, skein=os.path.join(T, "no-skein"), max_failures=3)
        except skein_ray.TrainError as e:
            return None if "no-skein" in str(e) else str(e)
        return "a missing skein binary went unnoticed"

    def train_cli() -> Optional[str]:
        cli = [sys.executable, "-m", "skein_ray", "train", "--address", ADDRESS, "--skein", SK, "--workers", "1", "--"]
        out = os.path.join(T, "cli")
        done = subprocess.run(cli + flags + ["--out", out], capture_output=True, text=True, timeout=300)
        bad = subprocess.run(cli + flags + ["--out", out + "-bad", "--steps", "x"], capture_output=True, text=True,
                             timeout=300)
        if done.returncode != 0 or losses(out) != losses(one):
            return f"exit status {done.returncode}, losses differ from plain skein train: {done.stderr[-300:]}"
        if bad.returncode != 1 or "refused its arguments" not in bad.stderr:
            return f"a bad --steps: exit status {bad.returncode}, {bad.stderr[-300:]}"
        return None

    case("ray_train_one_rank_killed_resumes", one_rank)
    case("ray_train_refused_flags_not_retried", refused)
    case("ray_cli_train", train_cli)
    why = torchrun_refusal(flags)
    if why:
        for name in ("ray_train_same_losses_as_workers_2", "ray_train_killed_rank_resumes"):
            print(f"SKIP {name}: this skein refuses torchrun-style launches on CPUs ({why})", flush=True)
        return

    ref = os.path.join(T, "ref")
    mpi = shutil.which("mpirun") and b"libmpi" in subprocess.run(["ldd", SK], capture_output=True).stdout
    env = {**os.environ, "OMPI_MCA_btl_vader_single_copy_mechanism": "none"}
    if os.getuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    subprocess.run([SK, "train", *flags, "--out", ref] + (["--workers", "2"] if mpi else []), env=env,
                   check=True, capture_output=True, timeout=300)
    run = os.path.join(T, "ray")

    def same_losses() -> Optional[str]:
        r = skein_ray.train(flags + ["--out", run], 2, skein=SK)
        a, b = losses(ref), losses(run)
        if r.failures or len(a) != 20 or len(b) != 20:
            return f"{r}, {len(a)} and {len(b)} steps"
        bad = [(i + 1, x, y) for i, (x, y) in enumerate(zip(a, b)) if abs(x - y) > 1e-5 * abs(x)]
        if bad or '"world_size": 2' not in open(os.path.join(run, "log.jsonl")).readline():
            return f"steps (step, --workers 2, ray) beyond 1e-5: {bad[:3]}"
        return None

    case("ray_train_same_losses_as_workers_2", same_losses)
    case("ray_train_killed_rank_resumes", lambda: killed(flags, 2, 1, os.path.join(T, "killed"), run))


def main() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _temp_dir=os.path.join(T, "ray-tmp"))
    global ADDRESS
    ADDRESS = ray.get_runtime_context().gcs_address
    try:
        serve_cases()
        train_cases()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
