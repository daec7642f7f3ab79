# Sourced by the multi-rank training tests (cli_zero.sh, cli_gloo.sh), after they set SK (the
# program), T (a scratch folder) and fail. Writes $T/tokens.bin (a repetitive token stream:
# 249 samples of 16 tokens over a vocabulary of 29) and $T/init (a tiny GPT-2), sets F (the
# training flags the tests share) and defines close. Exits with a FAIL line naming the test
# (TEST) when the data or the model cannot be written.
python3 tests/tiny_tokens.py "$T/tokens.bin" || { fail "$TEST" "cannot write the token shard"; exit 1; }
$SK init --arch gpt2 --layers 2 --heads 2 --dim 16 --context 32 --vocab-size 29 --out "$T/init" >/dev/null 2>&1 ||
    { fail "$TEST" "init failed"; exit 1; }
F="--model $T/init --data $T/tokens.bin --steps 20 --batch 7 --micro-batch 2 --seq 16 --lr 3e-3 --quiet"

# close A B TOL: the losses of B's log match A's within TOL relative, step for step.
close() {
    python3 - "$@" <<'PYEOF'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1] + '/log.jsonl')]
b = [json.loads(l) for l in open(sys.argv[2] + '/log.jsonl')]
tol = float(sys.argv[3])
if len(a) != len(b): sys.exit('%d vs %d log lines' % (len(a), len(b)))
for x, y in zip(a, b):
    if abs(x['loss'] - y['loss']) > tol * abs(x['loss']):
        sys.exit('step %d: loss %.9g vs %.9g' % (x['step'], x['loss'], y['loss']))
    if y['world_size'] < 1 or 'zero' not in y: sys.exit('log lacks world_size/zero')
PYEOF
}
