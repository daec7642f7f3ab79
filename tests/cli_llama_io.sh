#!/bin/sh
# Llama-family folder I/O from the command line: `skein init --arch llama` (a preset and
# explicit shapes, sharded), and, where a Python with transformers exists, test_llama_io's
# hf_python_loads_skein_llama_folders case plus tests/check_hf_load_llama.py on the folders
# init wrote (SKIP lines without it); `skein bench load` on the sharded folder (its JSON line). Run from the repository root; prints PASS/FAIL/SKIP
# lines for tests/run.sh.
BUILD=${BUILD:-build}
SKEIN=${SKEIN:-$BUILD/skein}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() {   # name, then a command that must succeed
    name=$1; shift
    if out=$("$@" 2>&1); then echo "PASS $name"; else echo "FAIL $name: $(echo "$out" | tail -n 3 | tr '\n' ' ')"; fail=1; fi
}
refuse() {  # name, expected text, then a command that must fail saying it
    name=$1; want=$2; shift 2
    if out=$("$@" 2>&1); then echo "FAIL $name: accepted"; fail=1
    elif echo "$out" | grep -q -- "$want"; then echo "PASS $name"
    else echo "FAIL $name: $(echo "$out" | tail -n 2 | tr '\n' ' ')"; fail=1; fi
}

check cli_llama_init_tiny_preset "$SKEIN" init --arch llama --preset tiny --out "$tmp/tiny"
check cli_llama_init_tiny_files test -s "$tmp/tiny/model.safetensors" -a -s "$tmp/tiny/config.json"
check cli_llama_init_shapes_sharded "$SKEIN" init --arch llama --layers 3 --heads 8 --kv-heads 2 --dim 256 \
    --ffn-dim 512 --context 512 --vocab-size 3000 --max-shard-mb 1 --out "$tmp/shapes"
check cli_llama_init_index test -s "$tmp/shapes/model.safetensors.index.json" -a -s "$tmp/shapes/model-00001-of-00006.safetensors"
refuse cli_llama_init_wrong_arch_preset "not a gpt2 preset" "$SKEIN" init --arch gpt2 --preset llama2-7b --out "$tmp/x"
refuse cli_llama_init_kv_heads "num_key_value_heads" "$SKEIN" init --arch llama --layers 2 --heads 4 --kv-heads 3 \
    --dim 64 --context 64 --vocab-size 100 --out "$tmp/x"

# bench load on the sharded folder: one JSON line whose bytes are the six shards' (the mapping
# read whole), whose rate is those bytes over its seconds, and whose device fields are null on
# the CPU; an unknown --device is refused naming it
if "$SKEIN" bench load --model "$tmp/shapes" >"$tmp/load.json" 2>"$tmp/load.err"; then
    check cli_bench_load_json python3 -c '
import json, os, sys
d = sys.argv[1]
j = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
files = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))
assert j["bench"] == "load" and j["file_bytes"] == files == j["cpu_bytes"], (j, files)
assert j["first_read_s"] > 0 and j["cpu_s"] > 0 and j["cpu_second_ms"] >= 0, j
assert abs(j["cpu_gb_per_s"] - files / j["cpu_s"] / 1e9) <= 1e-9 * j["cpu_gb_per_s"], j
for k in ("device", "device_dtype", "device_bytes", "device_s", "device_gb_per_s", "device_second_ms"):
    assert k in j and j[k] is None, (k, j)
' "$tmp/shapes" "$tmp/load.json"
else echo "FAIL cli_bench_load_json: $(tail -n 2 "$tmp/load.err" | tr '\n' ' ')"; fail=1; fi
refuse cli_bench_load_bad_device "--device tpu" "$SKEIN" bench load --model "$tmp/shapes" --device tpu

py=""
for cand in /opt/refenv/bin/python python3; do
    if command -v "$cand" >/dev/null 2>&1 &&
       "$cand" -c "import torch, transformers, safetensors" >/dev/null 2>&1; then
        py=$cand; break
    fi
done
if [ -n "$py" ]; then
    check cli_llama_hf_loads_init_tiny "$py" tests/check_hf_load_llama.py "$tmp/tiny"
    check cli_llama_hf_loads_init_sharded "$py" tests/check_hf_load_llama.py "$tmp/shapes"
    name=cli_llama_io_transformers_loads_skein_folders
    out=$(SKEIN_HF_PYTHON=$py "$BUILD/tests/test_llama_io" hf_python_loads_skein_llama_folders 2>&1)
    if echo "$out" | grep -q '^PASS hf_python_loads_skein_llama_folders'; then echo "PASS $name"
    else echo "FAIL $name: $(echo "$out" | tail -n 5 | tr '\n' ' ')"; fail=1; fi
else
    for name in cli_llama_hf_loads_init_tiny cli_llama_hf_loads_init_sharded cli_llama_io_transformers_loads_skein_folders; do
        echo "SKIP $name: no Python with torch, transformers and safetensors"
    done
fi
exit $fail
