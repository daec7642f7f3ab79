#!/bin/sh
# skein serve end to end, on the CPU, talking only to 127.0.0.1: a tiny random-weight Llama
# folder (skein init with the Llama-3-style fixture tokenizer) served on a free port (--port 0)
# with an API key; curl checks /health, /v1/models, a greedy completion equal to skein
# generate's text, the same text streamed and ending with [DONE], chat (whole and streamed),
# /tokenize and /detokenize, logprobs (greedy: the chosen token is the top one; streamed equal to
# whole) and the include_usage chunk, "n" choices (each the one-choice request of its seed; streamed
# equal to whole), each malformed request's 4xx with an OpenAI error body (the server answering after each),
# and /metrics counting them; then, on a slower model with one sequence and no queue, 503 with
# Retry-After while busy and client disconnects cancelling their requests (streamed or whole).
# The servers are killed at the end (trap). Prints PASS/FAIL lines.
. tests/lib_serve.sh
command -v curl >/dev/null 2>&1 || { echo "SKIP cli_serve: curl not found"; exit 0; }
command -v python3 >/dev/null 2>&1 || { echo "SKIP cli_serve: python3 not found"; exit 0; }
KEY=test-key-123
if ! $SK init --arch llama --layers 2 --heads 4 --kv-heads 2 --dim 64 --context 128 --tokenizer $TOK --out "$T/m" >/dev/null 2>"$T/err"
then fail serve_init "$(tail -2 "$T/err")"; exit 1; fi
serve_start "$T/log" --model "$T/m" --api-key $KEY --chat-template llama3 --max-body 65536 ||
    { fail serve_start "$(cat "$T/log")"; exit 1; }
pass serve_start
AUTH="Authorization: Bearer $KEY"
C=$U/v1/completions
# req NAME ARGS...: the body to $T/NAME.out, the status printed
req() { n=$1; shift; curl -s -m 30 -o "$T/$n.out" -w '%{http_code}' "$@"; }
# json FILE EXPR: evaluates a Python expression over the parsed body j; exits non-zero if false
json() { python3 -c "import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if ($2) else 1)" "$1"; }

[ "$(req health $U/health)" = 200 ] && pass serve_health || fail serve_health "$(cat "$T/health.out")"
if [ "$(req models -H "$AUTH" $U/v1/models)" = 200 ] && json "$T/models.out" 'j["data"][0]["id"] == "m" and j["object"] == "list"'
then pass serve_models; else fail serve_models "$(cat "$T/models.out")"; fi

# a greedy completion equals skein generate's text (stdout: the prompt, the text, a newline)
$SK generate --model "$T/m" --prompt "static int" --max-tokens 12 --temperature 0 >"$T/gen" 2>/dev/null
body='{"model": "m", "prompt": "static int", "max_tokens": 12, "temperature": 0}'
st=$(req comp -H "$AUTH" -H 'Content-Type: application/json' -d "$body" $U/v1/completions)
cat > "$T/same.py" <<'PY'
import json, sys
gen = open(sys.argv[1], 'rb').read()
assert gen.startswith(b'static int') and gen.endswith(b'\n'), gen
want = gen[len(b'static int'):-1].decode('utf-8', 'replace')
if sys.argv[3] == 'whole':
    j = json.load(open(sys.argv[2]))
    got = j['choices'][0]['text']
    assert j['usage']['completion_tokens'] == 12 and j['choices'][0]['finish_reason'] == 'length', j
else:
    lines = [l for l in open(sys.argv[2], encoding='utf-8').read().split('\n') if l]
    assert lines[-1] == 'data: [DONE]', lines[-1]
    chunks = [json.loads(l[6:]) for l in lines[:-1]]
    got = ''.join(c['choices'][0]['text'] for c in chunks)
    assert chunks[-1]['choices'][0]['finish_reason'] == 'length', chunks[-1]
if got != want:
    print('server %r, generate %r' % (got, want)); sys.exit(1)
PY
if [ "$st" = 200 ] && python3 "$T/same.py" "$T/gen" "$T/comp.out" whole >"$T/why" 2>&1
then pass serve_completion_equals_generate; else fail serve_completion_equals_generate "$st $(cat "$T/why" "$T/comp.out")"; fi
body='{"prompt": "static int", "max_tokens": 12, "temperature": 0, "stream": true}'
st=$(req stream -N -H "$AUTH" -d "$body" $U/v1/completions)
if [ "$st" = 200 ] && python3 "$T/same.py" "$T/gen" "$T/stream.out" stream >"$T/why" 2>&1
then pass serve_stream_equals_generate; else fail serve_stream_equals_generate "$st $(cat "$T/why" "$T/stream.out")"; fi

body='{"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], "max_tokens": 6, "seed": 7}'
if [ "$(req chat -H "$AUTH" -d "$body" $U/v1/chat/completions)" = 200 ] &&
   json "$T/chat.out" 'j["object"] == "chat.completion" and j["choices"][0]["message"]["role"] == "assistant" and j["usage"]["completion_tokens"] <= 6'
then pass serve_chat; else fail serve_chat "$(cat "$T/chat.out")"; fi
body='{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": true}'
if [ "$(req chats -N -H "$AUTH" -d "$body" $U/v1/chat/completions)" = 200 ] && tail -2 "$T/chats.out" | grep -q '^data: \[DONE\]$' &&
   head -1 "$T/chats.out" | grep -q '"delta":{"role":"assistant"}'
then pass serve_chat_stream; else fail serve_chat_stream "$(cat "$T/chats.out")"; fi

# /tokenize gives the ids a completion's prompt gets (usage counts them); /detokenize inverts it
if [ "$(req tokz -H "$AUTH" -d '{"model": "m", "prompt": "static int"}' $U/tokenize)" = 200 ] &&
   json "$T/tokz.out" "j['count'] == len(j['tokens']) == json.load(open('$T/comp.out'))['usage']['prompt_tokens'] and j['max_model_len'] == 128"
then pass serve_tokenize; else fail serve_tokenize "$(cat "$T/tokz.out" "$T/comp.out")"; fi
toks=$(python3 -c "import json; print(json.dumps(json.load(open('$T/tokz.out'))['tokens']))")
if [ "$(req detok -H "$AUTH" -d "{\"model\": \"m\", \"tokens\": $toks}" $U/detokenize)" = 200 ] &&
   json "$T/detok.out" "j['prompt'].endswith('static int')"
then pass serve_detokenize; else fail serve_detokenize "$(cat "$T/detok.out")"; fi

# logprobs under greedy decoding: the chosen token's log-probability is the top list's max,
# the streamed chunks' lists joined equal the whole response's (completions and chat); usage
# is in every whole response and, with stream_options.include_usage, in a last chunk
cat > "$T/lp.py" <<'PY'
import json, sys
chat, whole, stream = sys.argv[1] == 'chat', json.load(open(sys.argv[2])), open(sys.argv[3], encoding='utf-8').read()
lines = [l for l in stream.split('\n') if l]
assert lines[-1] == 'data: [DONE]', lines[-1]
chunks = [json.loads(l[6:]) for l in lines[:-1]]
u, w = chunks[-1], whole['usage']
assert u['choices'] == [] and u['usage'] == w, (u, w)
assert w['total_tokens'] == w['prompt_tokens'] + w['completion_tokens'] and w['completion_tokens'] > 0, w
lps = [c['choices'][0]['logprobs'] for c in chunks[:-1] if c['choices'][0]['logprobs']]
lp = whole['choices'][0]['logprobs']
if chat:
    got = [e for l in lps for e in l['content']]
    assert got == lp['content'], (got, lp['content'])
    assert len(got) == w['completion_tokens'], got
    for e in got:
        assert len(e['top_logprobs']) == 3 and e['logprob'] == max(t['logprob'] for t in e['top_logprobs']) <= 0, e
        assert e['token'] == e['top_logprobs'][0]['token'] and e['bytes'] == e['top_logprobs'][0]['bytes'], e
else:
    keys = ('tokens', 'token_logprobs', 'top_logprobs', 'text_offset')
    got = {k: [x for l in lps for x in l[k]] for k in keys}
    assert got == {k: lp[k] for k in keys}, (got, lp)
    assert len(got['tokens']) == w['completion_tokens'] and got['text_offset'][0] == 0, got
    for t, v, top in zip(got['tokens'], got['token_logprobs'], got['top_logprobs']):
        assert 1 <= len(top) <= 3 and v == max(top.values()) <= 0 and top.get(t) == v, (t, v, top)
    assert got['text_offset'] == sorted(got['text_offset']), got
PY
body='{"prompt": "static int", "max_tokens": 8, "temperature": 0, "logprobs": 3'
if [ "$(req lpc -H "$AUTH" -d "$body}" $C)" = 200 ] &&
   [ "$(req lpcs -N -H "$AUTH" -d "$body, \"stream\": true, \"stream_options\": {\"include_usage\": true}}" $C)" = 200 ] &&
   python3 "$T/lp.py" completion "$T/lpc.out" "$T/lpcs.out" >"$T/why" 2>&1
then pass serve_logprobs_completion; else fail serve_logprobs_completion "$(cat "$T/why")"; fi
body='{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0, "ignore_eos": true, "logprobs": true, "top_logprobs": 3'
if [ "$(req lpch -H "$AUTH" -d "$body}" $U/v1/chat/completions)" = 200 ] &&
   [ "$(req lpchs -N -H "$AUTH" -d "$body, \"stream\": true, \"stream_options\": {\"include_usage\": true}}" $U/v1/chat/completions)" = 200 ] &&
   python3 "$T/lp.py" chat "$T/lpch.out" "$T/lpchs.out" >"$T/why" 2>&1
then pass serve_logprobs_chat; else fail serve_logprobs_chat "$(cat "$T/why")"; fi

# "n": choices of one prompt, choice i sampled with the seed + i: each equals the one-choice
# request with that seed; usage counts the prompt once and every choice's tokens. Streamed
# (chat): a role chunk, text and one finish_reason chunk per choice, the texts the whole
# response's, the usage chunk last.
cat > "$T/n.py" <<'PY'
import json, sys
def chunks(path):
    lines = [l for l in open(path, encoding='utf-8').read().split('\n') if l]
    assert lines[-1] == 'data: [DONE]', lines[-1]
    return [json.loads(l[6:]) for l in lines[:-1]]
if sys.argv[1] == 'completion':
    j = json.load(open(sys.argv[2]))
    ones = [json.load(open(f)) for f in sys.argv[3:]]
    assert [c['index'] for c in j['choices']] == list(range(len(ones))), j
    for c, o in zip(j['choices'], ones):
        assert c['text'] == o['choices'][0]['text'] and c['finish_reason'] == 'length', (c, o)
    assert len({c['text'] for c in j['choices']}) > 1, 'the choices are all the same text'
    u = j['usage']
    assert u['prompt_tokens'] == ones[0]['usage']['prompt_tokens'] and u['completion_tokens'] == 10 * len(ones), u
    assert u['total_tokens'] == u['prompt_tokens'] + u['completion_tokens'], u
else:
    whole = json.load(open(sys.argv[2]))
    cs = chunks(sys.argv[3])
    usage = cs[-1]
    assert usage['choices'] == [] and usage['usage'] == whole['usage'] and usage['usage']['completion_tokens'] == 12, usage
    text, roles, ends = {}, {}, {}
    for c in cs[:-1]:
        (ch,) = c['choices']
        i, d = ch['index'], ch['delta']
        assert i not in ends, 'chunk after the end of choice %d' % i
        if 'role' in d: roles[i] = roles.get(i, 0) + 1
        text[i] = text.get(i, '') + d.get('content', '')
        if ch['finish_reason']: ends[i] = ch['finish_reason']
    assert roles == {0: 1, 1: 1} and ends == {0: 'length', 1: 'length'}, (roles, ends)
    assert [text[i] for i in (0, 1)] == [c['message']['content'] for c in whole['choices']], (text, whole)
PY
body='"prompt": "static int", "max_tokens": 10, "temperature": 1, "ignore_eos": true'
ok=1
for i in 0 1 2; do [ "$(req n1_$i -H "$AUTH" -d "{$body, \"seed\": $((42 + i))}" $C)" = 200 ] || ok=0; done
if [ $ok = 1 ] && [ "$(req n3 -H "$AUTH" -d "{$body, \"seed\": 42, \"n\": 3}" $C)" = 200 ] &&
   python3 "$T/n.py" completion "$T/n3.out" "$T/n1_0.out" "$T/n1_1.out" "$T/n1_2.out" >"$T/why" 2>&1
then pass serve_n_choices_seeded; else fail serve_n_choices_seeded "$(cat "$T/why" "$T/n3.out")"; fi
body='"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "seed": 5, "n": 2, "ignore_eos": true'
if [ "$(req n2ch -H "$AUTH" -d "{$body}" $U/v1/chat/completions)" = 200 ] &&
   [ "$(req n2chs -N -H "$AUTH" -d "{$body, \"stream\": true, \"stream_options\": {\"include_usage\": true}}" $U/v1/chat/completions)" = 200 ] &&
   python3 "$T/n.py" chat "$T/n2ch.out" "$T/n2chs.out" >"$T/why" 2>&1
then pass serve_n_chat_streamed; else fail serve_n_chat_streamed "$(cat "$T/why" "$T/n2chs.out")"; fi

# malformed requests: NAME STATUS PARAM(or -) then curl arguments
python3 -c "import json; print(json.dumps({'prompt': 'word ' * 400}))" >"$T/long.json"
head -c 100000 /dev/zero | tr '\0' a >"$T/big"
bad() {
    n=$1; want=$2; param=$3; shift 3
    st=$(req "$n" "$@")
    if [ "$st" = "$want" ] && json "$T/$n.out" "set(j['error']) >= {'message', 'type', 'param', 'code'} and ('$param' == '-' or j['error']['param'] == '$param')" &&
       [ "$(req "$n.health" $U/health)" = 200 ]
    then pass "serve_$n"; else fail "serve_$n" "status $st, want $want: $(cat "$T/$n.out")"; fi
}
bad bad_json 400 - -H "$AUTH" -d '{"prompt": "a",' $C
bad not_object 400 - -H "$AUTH" -d '[1, 2]' $C
bad wrong_type 400 temperature -H "$AUTH" -d '{"prompt": "a", "temperature": "hot"}' $C
bad prompt_type 400 prompt -H "$AUTH" -d '{"prompt": 5}' $C
bad negative_max_tokens 400 max_tokens -H "$AUTH" -d '{"prompt": "a", "max_tokens": -3}' $C
bad huge_max_tokens 400 max_tokens -H "$AUTH" -d '{"prompt": "a", "max_tokens": 100000000}' $C
bad n_zero 400 n -H "$AUTH" -d '{"prompt": "a", "n": 0}' $C
bad n_over_cap 400 n -H "$AUTH" -d '{"prompt": "a", "n": 129}' $C
bad top_p 400 top_p -H "$AUTH" -d '{"prompt": "a", "top_p": 0}' $C
bad stop_type 400 stop -H "$AUTH" -d '{"prompt": "a", "stop": 3}' $C
bad messages 400 messages -H "$AUTH" -d '{"messages": "hi"}' $U/v1/chat/completions
bad tokenize_prompt 400 prompt -H "$AUTH" -d '{"prompt": [1]}' $U/tokenize
bad detokenize_float 400 tokens -H "$AUTH" -d '{"tokens": [1, 2.5]}' $U/detokenize
bad detokenize_oov 400 tokens -H "$AUTH" -d '{"tokens": [100000000]}' $U/detokenize
bad tokenize_no_key 401 - -d '{"prompt": "a"}' $U/tokenize
bad logprobs_range 400 logprobs -H "$AUTH" -d '{"prompt": "a", "logprobs": 21}' $C
bad top_logprobs_alone 400 top_logprobs -H "$AUTH" -d '{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}' $U/v1/chat/completions
bad stream_options_whole 400 stream_options -H "$AUTH" -d '{"prompt": "a", "stream_options": {"include_usage": true}}' $C
bad unknown_model 404 model -H "$AUTH" -d '{"model": "gpt-4", "prompt": "a"}' $C
bad unknown_route 404 - -H "$AUTH" $U/v1/embeddings
bad no_key 401 - -d '{"prompt": "a"}' $C
bad wrong_key 401 - -H "Authorization: Bearer $KEY-x" -d '{"prompt": "a"}' $C
bad models_no_key 401 - $U/v1/models
bad body_over_cap 413 - -H "$AUTH" --data-binary @"$T/big" $C
bad prompt_too_long 400 prompt -H "$AUTH" -d @"$T/long.json" $C
bad prompt_list 400 prompt -H "$AUTH" -d '{"prompt": ["a", "b"]}' $C
bad prompt_id_oov 400 prompt -H "$AUTH" -d '{"prompt": [1, 100000000]}' $C
bad stop_token_ids_many 400 stop_token_ids -H "$AUTH" -d '{"prompt": "a", "stop_token_ids": [1, 2, 3, 4, 5, 6, 7, 8]}' $C
bad max_completion_tokens_zero 400 max_completion_tokens -H "$AUTH" -d '{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}' $U/v1/chat/completions
bad content_image 400 messages -H "$AUTH" -d '{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}' $U/v1/chat/completions

# a stop string ends the text before it (the text before it equals generate's prefix)
first=$(python3 -c "import json; t=json.load(open('$T/comp.out'))['choices'][0]['text']; print(t[2:4] if len(t) > 4 and t[2:4].isprintable() else '')")
if [ -n "$first" ]; then
    body=$(python3 -c "import json,sys; print(json.dumps({'prompt': 'static int', 'max_tokens': 12, 'temperature': 0, 'stop': [sys.argv[1]]}))" "$first")
    if [ "$(req stop -H "$AUTH" -d "$body" $C)" = 200 ] &&
       json "$T/stop.out" "j['choices'][0]['finish_reason'] == 'stop' and '$first' not in j['choices'][0]['text'] and json.load(open('$T/comp.out'))['choices'][0]['text'].startswith(j['choices'][0]['text'])"
    then pass serve_stop_string; else fail serve_stop_string "$(cat "$T/stop.out")"; fi
else echo "SKIP serve_stop_string: the greedy text has no printable stop candidate"; fi

# vLLM's and OpenAI's newer request forms: a prompt of token ids (/tokenize's ids give the
# string's text), "return_tokens_as_token_ids" naming the logprobs' tokens "token_id:ID",
# "stop_token_ids" ending the text before the first such token (ignore_eos leaves them in
# force), chat's "max_completion_tokens" over "max_tokens", and a message's content as a list of
# text parts (joined with newlines)
body=$(python3 -c "import json; print(json.dumps({'prompt': json.load(open('$T/tokz.out'))['tokens'], 'max_tokens': 12, 'temperature': 0}))")
if [ "$(req pids -H "$AUTH" -d "$body" $C)" = 200 ] &&
   json "$T/pids.out" "j['choices'][0]['text'] == json.load(open('$T/comp.out'))['choices'][0]['text'] and j['usage']['prompt_tokens'] == json.load(open('$T/comp.out'))['usage']['prompt_tokens']"
then pass serve_prompt_token_ids; else fail serve_prompt_token_ids "$(cat "$T/pids.out")"; fi
body='{"prompt": "static int", "max_tokens": 12, "temperature": 0, "logprobs": 1, "return_tokens_as_token_ids": true}'
if [ "$(req asids -H "$AUTH" -d "$body" $C)" = 200 ] &&
   json "$T/asids.out" "len(j['choices'][0]['logprobs']['tokens']) == 12 and all(t.startswith('token_id:') and all(k.startswith('token_id:') for k in top) for t, top in zip(j['choices'][0]['logprobs']['tokens'], j['choices'][0]['logprobs']['top_logprobs']))"
then pass serve_tokens_as_ids; else fail serve_tokens_as_ids "$(cat "$T/asids.out")"; fi
# the third token's id as a stop id: the text is /detokenize's of the ids before its first place
python3 -c "
import json, sys
ids = [int(t.split(':')[1]) for t in json.load(open(sys.argv[1]))['choices'][0]['logprobs']['tokens']]
x = ids[2]
print(json.dumps({'tokens': ids[:ids.index(x)]}))
print(json.dumps({'prompt': 'static int', 'max_tokens': 12, 'temperature': 0, 'ignore_eos': True, 'stop_token_ids': [x]}))
" "$T/asids.out" >"$T/stopid" 2>/dev/null
if [ "$(req before -H "$AUTH" -d "$(sed -n 1p "$T/stopid")" $U/detokenize)" = 200 ] &&
   [ "$(req stopid -H "$AUTH" -d "$(sed -n 2p "$T/stopid")" $C)" = 200 ] &&
   json "$T/stopid.out" "j['choices'][0]['finish_reason'] == 'stop' and j['choices'][0]['text'] == json.load(open('$T/before.out'))['prompt']"
then pass serve_stop_token_ids; else fail serve_stop_token_ids "$(cat "$T/stopid" "$T/stopid.out")"; fi
body='{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 9, "max_completion_tokens": 3, "ignore_eos": true}'
if [ "$(req mct -H "$AUTH" -d "$body" $U/v1/chat/completions)" = 200 ] &&
   json "$T/mct.out" "j['usage']['completion_tokens'] == 3 and j['choices'][0]['finish_reason'] == 'length'"
then pass serve_max_completion_tokens; else fail serve_max_completion_tokens "$(cat "$T/mct.out")"; fi
body='{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]}], "max_tokens": 6, "temperature": 0}'
body2='{"messages": [{"role": "user", "content": "hi\nthere"}], "max_tokens": 6, "temperature": 0}'
if [ "$(req parts -H "$AUTH" -d "$body" $U/v1/chat/completions)" = 200 ] && [ "$(req joined -H "$AUTH" -d "$body2" $U/v1/chat/completions)" = 200 ] &&
   json "$T/parts.out" "(j['choices'][0]['message'], j['usage']) == (lambda o: (o['choices'][0]['message'], o['usage']))(json.load(open('$T/joined.out')))"
then pass serve_content_parts; else fail serve_content_parts "$(cat "$T/parts.out" "$T/joined.out")"; fi

# special tokens leave the text as vLLM's skip_special_tokens (true by default) leaves them: four
# sampled choices, their ids named (return_tokens_as_token_ids), one holding a special token;
# each text is /detokenize's of its ids without the specials, and with "skip_special_tokens":
# false of all of them
for sk in true false; do
    req "special_$sk" -H "$AUTH" -d "{\"prompt\": \"static int\", \"max_tokens\": 100, \"temperature\": 2, \"n\": 4, \"seed\": 5, \"ignore_eos\": true, \"logprobs\": 0, \"return_tokens_as_token_ids\": true, \"skip_special_tokens\": $sk}" $C >/dev/null
done
cat > "$T/special.py" <<'PY'
import json, sys, urllib.request
url, key, d, tokenizer = sys.argv[1:5]
special = {t['id'] for t in json.load(open(tokenizer))['added_tokens'] if t['special']}
def detok(ids):
    rq = urllib.request.Request(url + '/detokenize', json.dumps({'tokens': ids}).encode(), {'Authorization': 'Bearer ' + key})
    return json.load(urllib.request.urlopen(rq, timeout=30))['prompt']
skip, keep = (json.load(open('%s/special_%s.out' % (d, s)))['choices'] for s in ('true', 'false'))
seen = 0
for a, b in zip(skip, keep):
    ids = [int(t.split(':')[1]) for t in a['logprobs']['tokens']]
    assert ids == [int(t.split(':')[1]) for t in b['logprobs']['tokens']], 'the two calls sampled differently'
    seen += sum(i in special for i in ids)
    assert a['text'] == detok([i for i in ids if i not in special]), (a['text'], ids)
    assert b['text'] == detok(ids), (b['text'], ids)
assert len(skip) == 4 and seen > 0, 'no special token sampled: the test checks nothing (another seed)'
PY
if python3 "$T/special.py" $U $KEY "$T" "$T/m/tokenizer.json" 2>"$T/why"
then pass serve_skip_special_tokens; else fail serve_skip_special_tokens "$(tail -3 "$T/why")"; fi

# /metrics: the answers above, counted by status; the model's series carry its label
curl -s -m 10 $U/metrics >"$T/metrics"
# msum NAME: NAME's samples in $T/metrics summed over their labels
msum() { awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2; f = 1 } END { if (f) printf "%d\n", s }' "$T/metrics"; }
if grep -q '^skein_requests_total{status="200"} [1-9]' "$T/metrics" && grep -q '^skein_requests_total{status="400"} 23$' "$T/metrics" &&
   grep -q '^skein_requests_total{status="401"} 4$' "$T/metrics" && grep -q '^skein_requests_total{status="413"} 1$' "$T/metrics" &&
   grep -q '^skein_requests_total{status="404"} 2$' "$T/metrics" && grep -q '^skein_generation_tokens_total{model="m"} [1-9]' "$T/metrics" &&
   grep -q '^skein_kv_blocks_used{model="m",replica="0"} 0$' "$T/metrics" && [ "$(msum skein_queue_depth)" = 0 ] &&
   grep -q '^skein_replicas_up{model="m"} 1$' "$T/metrics"
then pass serve_metrics; else fail serve_metrics "$(grep -v '^#' "$T/metrics")"; fi

kill $PID; wait $PID 2>/dev/null; PID=""
grep -q 'stopping' "$T/log" && pass serve_stops || fail serve_stops "$(tail -3 "$T/log")"

# one sequence and no queue, a model slow enough (4000 tokens take seconds): a second request
# while one runs gets 503 with Retry-After, a call of more choices than it can ever hold 400; a client that leaves (curl -m) has its request
# cancelled (its blocks freed, far fewer than 4000 tokens generated), streaming or not, and a
# call of three choices has all three cancelled
if ! $SK init --arch llama --layers 4 --heads 4 --kv-heads 2 --dim 256 --context 4096 --tokenizer $TOK --out "$T/slow" >/dev/null 2>"$T/err"
then fail serve_init_slow "$(tail -2 "$T/err")"; exit 1; fi
serve_start "$T/log" --model "$T/slow" --max-seqs 1 --max-queue 0 || { fail serve_start_slow "$(cat "$T/log")"; exit 1; }
long='{"prompt": "a", "max_tokens": 4000, "ignore_eos": true'
# metric NAME: its value, summed over its labels (every replica)
metric() { curl -s -m 10 $U/metrics >"$T/metrics"; msum "$1"; }
# cancelled NAME: after the client left, no sequence runs, no block is held, < 4000 tokens
cancelled() {
    i=0
    while [ "$(metric skein_running_sequences)" != 0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
    g=$(metric skein_generation_tokens_total); b=$(metric skein_kv_blocks_used)
    if [ "$b" = 0 ] && [ "$g" -gt "$1" ] && [ "$g" -lt $(($1 + 4000)) ]; then pass "serve_$2"; else fail "serve_$2" "blocks $b, tokens $1 -> $g"; fi
}
curl -s -N -m 1 -d "$long, \"stream\": true}" $U/v1/completions >/dev/null &
CURL=$!
sleep 0.3
st=$(curl -s -m 10 -D "$T/hdr" -o "$T/busy.out" -w '%{http_code}' -d '{"prompt": "a", "max_tokens": 2}' $U/v1/completions)
if [ "$st" = 503 ] && grep -qi '^retry-after: 1' "$T/hdr" && json "$T/busy.out" "j['error']['code'] == 'server_overloaded'"
then pass serve_queue_full_503; else fail serve_queue_full_503 "status $st: $(cat "$T/hdr" "$T/busy.out")"; fi
wait $CURL
# more choices than the model can ever hold at once (1 sequence, no queue): 400 naming n, not a
# 503 a client would retry forever
st=$(curl -s -m 10 -o "$T/n2.out" -w '%{http_code}' -d '{"prompt": "a", "max_tokens": 2, "n": 2}' $U/v1/completions)
if [ "$st" = 400 ] && json "$T/n2.out" "j['error']['param'] == 'n' and 'limit of requests in flight is 1' in j['error']['message']"
then pass serve_n_over_capacity_400; else fail serve_n_over_capacity_400 "status $st: $(cat "$T/n2.out")"; fi
cancelled 0 disconnect_cancels_stream
g0=$(metric skein_generation_tokens_total)
curl -s -m 1 -d "$long}" $U/v1/completions >/dev/null
cancelled "$g0" disconnect_cancels_whole
if [ "$(req after -d '{"prompt": "a", "max_tokens": 3}' $U/v1/completions)" = 200 ] && json "$T/after.out" "j['usage']['completion_tokens'] <= 3"
then pass serve_answers_after_cancel; else fail serve_answers_after_cancel "$(cat "$T/after.out")"; fi

# a call of three choices whose client leaves (streamed): every choice is cancelled -- none
# finishes (the replica's count of finished requests stays), no block is held
kill $PID; wait $PID 2>/dev/null; PID=""
serve_start "$T/log3" --model "$T/slow" --max-seqs 3 --max-queue 0 || { fail serve_start_slow3 "$(cat "$T/log3")"; exit 1; }
g0=$(metric skein_generation_tokens_total); r0=$(metric skein_replica_requests_total)
curl -s -N -m 1 -d "$long, \"stream\": true, \"n\": 3}" $U/v1/completions >/dev/null
i=0
while [ "$(metric skein_running_sequences)" != 0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
g=$(metric skein_generation_tokens_total); b=$(metric skein_kv_blocks_used); r=$(metric skein_replica_requests_total)
if [ "$b" = 0 ] && [ "$r" = "$r0" ] && [ "$g" -gt "$g0" ]; then pass serve_disconnect_cancels_choices
else fail serve_disconnect_cancels_choices "blocks $b, finished $r0 -> $r, tokens $g0 -> $g"; fi
