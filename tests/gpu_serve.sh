#!/bin/sh
# skein serve on one GPU (make test-gpu; needs a GPU and NVML, 127.0.0.1 only): replicas and the
# device copy of the weights (docs/serve.md, "Shared weights"), over a GPT-2-medium-shapes folder
# (skein init, the fixture tokenizer: about 0.6 GB in bf16, far more than a replica's own KV pool
# and workspaces, which the engine flags below keep small):
#   - one thread replica, then two (their log's upload, share, start and first-token lines printed
#     for docs/serve.md): the second shares the first's device copy -- the log has one
#     upload ("weights: X GB in bf16 on cuda device 0") and one share ("sharing the ... (2
#     models)"), and NVML's memory in use grows by less than half the copy (W) from one to two
#     (the second engine's KV pool and workspaces only); both replicas answer, each answer the
#     greedy text of `skein generate --device cuda`;
#   - process replicas (--replica-process), one then two: the two share one device copy across
#     processes (devw.h) -- the log has one upload, the server's "made the device copy" line
#     naming the uploading child and one "(imported)" share -- and the second process costs
#     about W less GPU memory than the first (nvidia-smi's memory in use: with no server, one
#     process, two; the difference of the two increments is between W/2 and 3W/2); both answer
#     with generate's texts; then the uploading child is killed (SIGKILL): the server replaces
#     it, the new child imports the copy the server still holds (a second "(imported)", still
#     one upload), the memory in use stays within W/2 of what it was, and the new replica and
#     the surviving one answer with the same texts;
#   - skein bench load --device cuda on the folder: its JSON line (device bytes about half the
#     f32 files, a second model sharing the copy in well under a tenth of the upload's time).
# Speeds, printed for docs/benchmarks.md and not judged, where asked for (each a few minutes):
#   SKEIN_GPU_LOAD_8B=1      bench load of a Llama-3-8B-shapes bf16 folder (skein init --preset
#                            llama3-8b: 16 GB written to $TMPDIR)
#   SKEIN_GPU_SERVE_BENCH=1  bench serve on GPT-2 124M shapes with 1, 2 and 4 replicas, and one
#                            replica with 4 times the batch
# Prints PASS/FAIL/SKIP lines; the servers are killed at the end (trap).
. tests/lib_serve.sh
. tests/lib_replicas.sh
PFX=gpu_serve
PIDS=""
trap 'for p in $PIDS; do pkill -KILL -P "$p" 2>/dev/null; kill "$p" 2>/dev/null; done; rm -rf "$T"' EXIT
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "SKIP gpu_serve: no GPU here"; exit 0
fi
command -v python3 >/dev/null 2>&1 || { echo "SKIP gpu_serve: python3 not found"; exit 0; }
# lib_replicas.sh's post and metrics through Python's urllib: the GPU machine may have no curl
post() {
    python3 - "$1/v1/completions" "$T/$2" "$3" <<'PY'
import sys, urllib.error, urllib.request
url, out, body = sys.argv[1:]
req = urllib.request.Request(url, data=body.encode(), headers={'Content-Type': 'application/json'})
try:
    r = urllib.request.urlopen(req, timeout=60)
    st, data = r.status, r.read()
except urllib.error.HTTPError as e:
    st, data = e.code, e.read()
open(out + '.out', 'wb').write(data)
open(out + '.st', 'w').write(str(st))
PY
}
metrics() {
    python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1] + '/metrics', timeout=10).read().decode())" \
        "$1" >"$T/metrics"
}
$SK init --arch gpt2 --preset gpt2-medium --tokenizer tests/fixtures/tok/gpt2.json --out "$T/g" >/dev/null 2>"$T/err" ||
    { fail gpu_serve_init "$(tail -2 "$T/err")"; exit 1; }
SMALL="--device cuda --max-seqs 4 --max-ctx 256 --max-batch-tokens 256 --kv-memory 64M"
PROMPTS="p1:static int|p2:the server|p3:one copy|p4:of the weights"

# the reference texts: skein generate on the GPU, one prompt at a time
IFS='|'; for p in $PROMPTS; do
    name=${p%%:*}; text=${p#*:}
    $SK generate --model "$T/g" --device cuda --prompt "$text" --max-tokens 16 --temperature 0 >"$T/$name.gen" 2>"$T/err" ||
        { fail gpu_serve_generate "$(tail -2 "$T/err")"; exit 1; }
done; unset IFS

# used: NVML's memory in use on GPU 0 from URL's /metrics
used() { metrics "$1"; mval 'skein_gpu_memory_used_bytes{gpu="0"}'; }
# asks URL NAME: the four prompts one after the other (each alone in its replica's batch, as in
# generate; equal loads alternate between two replicas), each answer equal to generate's text
asks() {
    bad=""
    IFS='|'; for p in $PROMPTS; do
        name=${p%%:*}; text=${p#*:}
        post "$1" "$2_$name" "$(body g "$text" 16 '')"
        python3 - "$T/$name.gen" "$T/$2_$name.out" "$text" <<'PY' || bad="$bad $name: $(cat "$T/$2_$name.out")"
import json, sys
gen, out, prompt = open(sys.argv[1], 'rb').read(), json.load(open(sys.argv[2])), sys.argv[3].encode()
assert gen.startswith(prompt) and gen.endswith(b'\n'), gen
want = gen[len(prompt):-1].decode('utf-8', 'replace')
got = out['choices'][0]['text']
assert out['usage']['completion_tokens'] == 16 and got == want, (got, want)
PY
    done; unset IFS
    echo "$bad"
}
# both_served: whether replicas 0 and 1 each finished a request ($T/metrics)
both_served() {
    [ "$(mval 'skein_replica_requests_total{model="g",replica="0"}')" -gt 0 ] &&
        [ "$(mval 'skein_replica_requests_total{model="g",replica="1"}')" -gt 0 ]
}

# threads: one replica, then two
start t1 --model "$T/g" --served-model-name g $SMALL
U1=$(used "$U"); stop t1 "$PID"
W=$(sed -n 's/.*weights: \([0-9.]*\) GB in bf16 on cuda device 0 .*/\1/p' "$T/t1.log" | head -1)
start t2 --model "$T/g" --served-model-name g $SMALL --replicas 2
U2=$(used "$U")
bad=$(asks "$U" t2)
metrics "$U"
uploads=$(grep -c 'GB in bf16 on cuda device 0' "$T/t2.log"); shares=$(grep -c 'sharing the .* device copy on cuda device 0 (2 models)' "$T/t2.log")
echo "  threads: one copy of $W GB; GPU memory in use $U1 bytes with one replica, $U2 with two"
grep -E 'weights:|up in|first token' "$T/t2.log" | sed 's/^/  /'
if [ -n "$W" ] && [ -n "$U1" ] && [ -n "$U2" ] && [ "$uploads" = 1 ] && [ "$shares" = 1 ] &&
   python3 -c "import sys; w, a, b = float(sys.argv[1]) * 1e9, int(sys.argv[2]), int(sys.argv[3]); sys.exit(not (0 <= b - a < w / 2))" "$W" "$U1" "$U2"
then pass gpu_serve_threads_share_one_copy; else fail gpu_serve_threads_share_one_copy "W '$W', used '$U1' -> '$U2', $uploads uploads, $shares shares: $(grep weights "$T/t2.log")"; fi
[ -z "$bad" ] && both_served && pass gpu_serve_threads_answer_as_generate || fail gpu_serve_threads_answer_as_generate "$bad $(grep replica_requests "$T/metrics")"
stop t2 "$PID"

# processes: none, one replica process, then two sharing one copy
# smi_used: memory in use on GPU 0 in bytes, from nvidia-smi (also with no server running)
smi_used() { echo $(($(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0) * 1048576)); }
# copies_logged: "UPLOADS IMPORTS" of the weights on cuda device 0 in $T/p2.log
copies_logged() {
    echo "$(grep -c 'GB in bf16 on cuda device 0 in' "$T/p2.log") $(grep -c 'sharing the .* device copy on cuda device 0 with replica processes (imported)' "$T/p2.log")"
}
P0=$(smi_used)
start p1 --model "$T/g" --served-model-name g $SMALL --replica-process
P1=$(smi_used); stop p1 "$PID"
start p2 --model "$T/g" --served-model-name g $SMALL --replica-process --replicas 2
P2=$(smi_used)
bad=$(asks "$U" p2)
metrics "$U"
copies=$(copies_logged)
maker_line=$(grep 'made the device copy of the weights on cuda device 0' "$T/p2.log" | head -1)
maker=$(echo "$maker_line" | sed -n 's/.*replica \([0-9]*\) (process \([0-9]*\)) made .*/\2/p')
maker_rep=$(echo "$maker_line" | sed -n 's/.*replica \([0-9]*\) (process \([0-9]*\)) made .*/\1/p')
echo "  processes: GPU memory in use $P0 bytes with no server, $P1 with one replica process, $P2 with two"
echo "  per process (nvidia-smi, not judged: how the driver charges a mapped copy to a process is its own):"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader | sed 's/^/    /'
grep -E 'weights:|made the device copy|up in|first token' "$T/p2.log" | sed 's/^/  /'
if [ "$copies" = "1 1" ] && [ -n "$maker" ] && [ -n "$P0" ] && [ -n "$P1" ] && [ -n "$P2" ] &&
   python3 -c "import sys; w, z, a, b = float(sys.argv[1]) * 1e9, int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]); sys.exit(not (w / 2 < (a - z) - (b - a) < 3 * w / 2))" "$W" "$P0" "$P1" "$P2"
then pass gpu_serve_processes_share_one_copy; else fail gpu_serve_processes_share_one_copy "uploads and imports '$copies', maker '$maker', used '$P0' -> '$P1' -> '$P2' (W $W GB): $(grep -E 'weights|made' "$T/p2.log")"; fi
[ -z "$bad" ] && both_served && pass gpu_serve_processes_answer_as_generate || fail gpu_serve_processes_answer_as_generate "$bad $(grep replica_requests "$T/metrics")"

# the uploading child killed: its replacement (replica 2) imports the copy the server holds
survivor=$((1 - ${maker_rep:-0}))
before=$(mval "skein_replica_requests_total{model=\"g\",replica=\"$survivor\"}")
[ -n "$maker" ] && kill -9 "$maker"
i=0
while metrics "$U" && { [ "$(mval 'skein_replica_failures_total{model="g"}')" != 1 ] || [ "$(mval 'skein_replicas_up{model="g"}')" != 2 ]; } &&
      [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
P3=$(smi_used)
copies=$(copies_logged)
bad=$(asks "$U" p2k)
metrics "$U"
echo "  after the uploading child (process $maker) was killed: GPU memory in use $P3 bytes"
grep -E 'down:|imported|up in' "$T/p2.log" | sed 's/^/  /'
if [ -n "$maker" ] && [ "$copies" = "1 2" ] && grep -q "replica process $maker was killed by signal 9" "$T/p2.log" &&
   [ "$(mval 'skein_replicas_up{model="g"}')" = 2 ] &&
   python3 -c "import sys; w, b, c = float(sys.argv[1]) * 1e9, int(sys.argv[2]), int(sys.argv[3]); sys.exit(not (abs(c - b) < w / 2))" "$W" "$P2" "$P3"
then pass gpu_serve_processes_uploader_killed_copy_kept; else fail gpu_serve_processes_uploader_killed_copy_kept "uploads and imports '$copies', used '$P2' -> '$P3' (W $W GB): $(tail -5 "$T/p2.log")"; fi
if [ -z "$bad" ] && [ "$(mval 'skein_replica_requests_total{model="g",replica="2"}')" -gt 0 ] &&
   [ "$(mval "skein_replica_requests_total{model=\"g\",replica=\"$survivor\"}")" -gt "${before:-0}" ]
then pass gpu_serve_processes_answer_after_the_uploader_died; else fail gpu_serve_processes_answer_after_the_uploader_died "$bad $(grep replica_requests "$T/metrics")"; fi
stop p2 "$PID"

# bench load --device cuda: its JSON line
# load_line DIR: bench load's JSON line for DIR into $T/load.json, echoed; non-zero when it failed
load_line() {
    $SK bench load --model "$1" --device cuda >"$T/load.json" 2>"$T/err" || { tail -2 "$T/err"; return 1; }
    grep 'GB/s' "$T/err" | sed 's/^/  /'
    sed 's/^/  /' "$T/load.json"
}
if load_line "$T/g" && python3 - "$T/load.json" <<'PY'
import json, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
assert j['device'] == 'cuda' and j['device_dtype'] == 'bf16', j
assert 0.45 * j['file_bytes'] <= j['device_bytes'] <= 0.55 * j['file_bytes'], j
assert j['device_gb_per_s'] > 0 and j['device_second_ms'] < 100 * j['device_s'], j
PY
then pass gpu_serve_bench_load; else fail gpu_serve_bench_load "$(cat "$T/load.json")"; fi

if [ "${SKEIN_GPU_LOAD_8B:-0}" = 1 ]; then
    if $SK init --arch llama --preset llama3-8b --out "$T/l8" >/dev/null 2>"$T/err" && load_line "$T/l8"
    then pass gpu_serve_load_llama3_8b; else fail gpu_serve_load_llama3_8b "$(tail -2 "$T/err")"; fi
    rm -rf "$T/l8"
fi

if [ "${SKEIN_GPU_SERVE_BENCH:-0}" = 1 ]; then
    $SK init --arch gpt2 --preset gpt2 --tokenizer tests/fixtures/tok/gpt2.json --out "$T/g124" >/dev/null 2>&1
    for cfg in "1:16" "2:16" "4:16" "1:64"; do
        r=${cfg%%:*}; s=${cfg#*:}
        start b$r$s --model "$T/g124" --device cuda --replicas "$r" --max-seqs "$s" --max-queue 512
        echo "  gpt2 124M, $r replica(s) of --max-seqs $s:"
        $SK bench serve --url "$U" --rate inf --num-prompts 512 --input-len 128 --output-len 128 2>&1 | sed 's/^/  /'
        stop b$r$s "$PID"
    done
fi
