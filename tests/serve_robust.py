#!/usr/bin/env python3
"""The load and abuse half of tests/cli_serve_robust.sh: standard library only (asyncio over
raw sockets), talking only to 127.0.0.1:PORT, every step under a deadline so that the run
stops by itself (STOP_S at most). Usage: serve_robust.py PORT KEY TIMEOUT_S CONTEXT, against a
skein serve started with --api-key KEY --timeout TIMEOUT_S, a model of CONTEXT tokens, room for
200 requests (--max-seqs x replicas + --max-queue) and --max-conns above 200.

Cases: 200 concurrent streaming clients all end with [DONE], 8 tokens each (counted from the
streamed log-probabilities and the usage chunk); then each malformed or hostile client while
probes (a 4-token completion) keep running: its answer is the 4xx it should get (or the server
cuts it off, within a bound; an idle keep-alive connection is closed after TIMEOUT_S), and every probe during it answers 200 within LIMIT (3 x the
median probe latency measured first, plus 1.5 s). At the end no sequence runs and no KV block is
held. Prints one PASS or FAIL line per case."""
import asyncio
import json
import socket
import statistics
import sys
import time

HOST = '127.0.0.1'
PORT, KEY, TIMEOUT, CTX = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
STOP_S = 240                 # the whole run, at most
MB = 1 << 20


def report(name, ok, why=''):
    print('PASS %s' % name if ok else 'FAIL %s: %s' % (name, why), flush=True)


async def read_response(r):
    """(status, headers with lower-case names, body) of one HTTP/1.1 response, chunked decoded."""
    head = await r.readuntil(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    status = int(lines[0].split()[1])
    hd = {k.strip().lower(): v.strip() for k, v in (l.split(':', 1) for l in lines[1:] if ':' in l)}
    if hd.get('transfer-encoding', '').lower() == 'chunked':
        data = b''
        while True:
            n = int((await r.readuntil(b'\r\n')).split(b';')[0], 16)
            if n == 0:
                break
            data += await r.readexactly(n)
            await r.readexactly(2)
    elif 'content-length' in hd:
        data = await r.readexactly(int(hd['content-length']))
    else:
        data = await r.read()
    return status, hd, data


def head_bytes(method, path, extra):
    h = {'Host': '127.0.0.1', 'Connection': 'close', 'Authorization': 'Bearer ' + KEY,
         'Content-Type': 'application/json'}
    h.update(extra)
    return ('%s %s HTTP/1.1\r\n' % (method, path) + ''.join('%s: %s\r\n' % kv for kv in h.items()) + '\r\n').encode()


async def request(method, path, body=b'', deadline=30):
    """One request on a connection of its own: (status, headers, body)."""
    async def go():
        r, w = await asyncio.open_connection(HOST, PORT)
        try:
            w.write(head_bytes(method, path, {'Content-Length': str(len(body))}) + body)
            await w.drain()
            return await read_response(r)
        finally:
            w.close()
    return await asyncio.wait_for(go(), deadline)


def post(obj):
    return request('POST', '/v1/completions', json.dumps(obj).encode())


async def probe():
    t0 = time.monotonic()
    st, _, data = await post({'prompt': 'static int', 'max_tokens': 4, 'temperature': 0})
    if st != 200:
        raise RuntimeError('probe got %d: %s' % (st, data[:200]))
    return time.monotonic() - t0


async def metrics():
    """The /metrics samples summed over their labels: {name: value}."""
    _, _, data = await request('GET', '/metrics')
    out = {}
    for line in data.decode().split('\n'):
        if line and not line.startswith('#'):
            name, value = line.rsplit(' ', 1)
            name = name.split('{')[0]
            out[name] = out.get(name, 0) + float(value)
    return out


async def during(name, attack, limit):
    """Runs attack() (-> (ok, why)) while probing every 0.3 s; PASS when the attack's outcome is
    right and every probe answered 200 within limit."""
    task = asyncio.ensure_future(attack())
    lat, why = [], ''
    while not task.done() or not lat:
        try:
            lat.append(await probe())
        except Exception as e:       # a probe that failed is the server failing others
            why = 'probe: %r' % e
            break
        await asyncio.sleep(0.3)
    try:
        ok, awhy = await asyncio.wait_for(task, 60)
    except Exception as e:
        ok, awhy = False, 'attack: %r' % e
    slow = max(lat) if lat else float('inf')
    if awhy and ok:
        print('# %s: %s' % (name, awhy), flush=True)
    report('serve_robust_' + name, ok and not why and slow <= limit,
           '%s %s; slowest probe %.3f s (limit %.3f s, %d probes)' % (awhy, why, slow, limit, len(lat)))


def expect(status, code=None):
    """An attack that sends body and wants status (and error code)."""
    async def check(st, data):
        if st != status:
            return False, 'status %d, want %d: %s' % (st, status, data[:300])
        if code and json.loads(data)['error']['code'] != code:
            return False, 'code %s, want %s' % (json.loads(data)['error'], code)
        return True, ''
    return check


def sending(body, status, code=None):
    async def attack():
        st, _, data = await request('POST', '/v1/completions', body)
        return await expect(status, code)(st, data)
    return attack


async def stream_one(i):
    body = {'prompt': 'client %d says' % i, 'max_tokens': 8, 'ignore_eos': True, 'stream': True, 'logprobs': 1,
            'stream_options': {'include_usage': True}}
    st, _, data = await request('POST', '/v1/completions', json.dumps(body).encode(), deadline=150)
    events = [l[6:] for l in data.decode().split('\n') if l.startswith('data: ')]
    if st != 200 or not events or events[-1] != '[DONE]':
        return 'status %d, last event %r' % (st, events[-1:] if events else None)
    chunks = [json.loads(e) for e in events[:-1]]
    toks = sum(len(c['choices'][0]['logprobs']['tokens']) for c in chunks if c['choices'] and c['choices'][0]['logprobs'])
    usage = chunks[-1].get('usage') or {}
    return None if toks == 8 and usage.get('completion_tokens') == 8 else 'tokens %d, usage %r' % (toks, usage)


async def huge_body(chunked):
    """100 MB toward /v1/completions (Content-Length or chunked): 413 or a cut, never held."""
    r, w = await asyncio.open_connection(HOST, PORT)
    extra = {'Transfer-Encoding': 'chunked'} if chunked else {'Content-Length': str(100 * MB)}
    reader = asyncio.ensure_future(read_response(r))
    t0 = time.monotonic()
    try:
        w.write(head_bytes('POST', '/v1/completions', extra))
        piece = b'a' * MB
        for _ in range(100):
            if reader.done():
                break
            w.write(b'%x\r\n%s\r\n' % (MB, piece) if chunked else piece)
            await w.drain()
        if chunked and not reader.done():
            w.write(b'0\r\n\r\n')
            await w.drain()
    except (ConnectionError, OSError):
        pass                         # the server stopped reading: the cut
    try:
        st, _, data = await asyncio.wait_for(reader, 30)
    except (ConnectionError, asyncio.IncompleteReadError, OSError):
        st, data = None, b''
    finally:
        w.close()
    took = time.monotonic() - t0
    if st not in (413, None):
        return False, 'status %s: %s' % (st, data[:200])
    return True, '(%s after %.1f s)' % (st or 'cut', took)


async def trickle(prefix, filler):
    """Sends prefix, then filler one byte a second: the server must cut the connection within
    TIMEOUT (+ the watchdog's beat and a second of the trickle), answering nothing but an error."""
    r, w = await asyncio.open_connection(HOST, PORT)
    t0 = time.monotonic()
    w.write(prefix)
    await w.drain()
    reader = asyncio.ensure_future(r.read())
    try:
        for i in range(int(TIMEOUT) + 20):
            if reader.done():
                break
            w.write(filler)
            await w.drain()
            await asyncio.sleep(1)
    except (ConnectionError, OSError):
        pass
    try:
        got = await asyncio.wait_for(reader, 5)
    except (ConnectionError, OSError):
        got = b''
    except asyncio.TimeoutError:
        return False, 'still connected after %.1f s' % (time.monotonic() - t0)
    finally:
        w.close()
    took = time.monotonic() - t0
    if got.startswith(b'HTTP/1.1 2'):
        return False, 'answered %r' % got[:100]
    return took <= TIMEOUT + 2.5, '(cut after %.1f s)' % took


async def idle_keepalive():
    """One keep-alive request answered, then silence: the server closes the connection within
    TIMEOUT (+ the watchdog's beat), not before the answer."""
    r, w = await asyncio.open_connection(HOST, PORT)
    body = b'{"prompt": "a", "max_tokens": 2}'
    w.write(head_bytes('POST', '/v1/completions', {'Content-Length': str(len(body)), 'Connection': 'keep-alive'}) + body)
    await w.drain()
    try:
        st, _, _ = await asyncio.wait_for(read_response(r), 30)
        t0 = time.monotonic()
        rest = await asyncio.wait_for(r.read(), TIMEOUT + 5)
    except asyncio.TimeoutError:
        return False, 'still open after %.1f s' % (TIMEOUT + 5)
    finally:
        w.close()
    took = time.monotonic() - t0
    return st == 200 and not rest and took <= TIMEOUT + 1.5, '(status %d, closed %.1f s after the answer)' % (st, took)


async def slow_reader():
    """A stream of large chunks (20 log-probabilities a token) to a client with a small receive
    buffer that reads nothing for TIMEOUT + 3 s: meanwhile its sequence must end and its blocks
    be freed (the engine never waits for a reader: the answer is buffered, at most max_tokens of
    it, or the connection cut by the idle timeout); then it reads what is left."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, (HOST, PORT))
    r, w = await asyncio.open_connection(sock=s)
    body = json.dumps({'prompt': 'slow', 'max_tokens': CTX - 16, 'ignore_eos': True, 'stream': True, 'logprobs': 20}).encode()
    w.write(head_bytes('POST', '/v1/completions', {'Content-Length': str(len(body))}) + body)
    await w.drain()
    await asyncio.sleep(TIMEOUT + 3)
    m = await metrics()
    freed = m.get('skein_running_sequences') == 0 and m.get('skein_kv_blocks_used') == 0
    try:
        data = await asyncio.wait_for(r.read(), 30)
        outcome = 'buffered, then read whole' if b'data: [DONE]' in data else 'cut after %d bytes' % len(data)
    except (ConnectionError, OSError):
        outcome = 'cut (reset)'
    finally:
        w.close()
    return freed, '(%s; while stalled: running %s, blocks %s)' % (outcome, m.get('skein_running_sequences'),
                                                                m.get('skein_kv_blocks_used'))


async def main():
    base = statistics.median([await probe() for _ in range(5)])
    limit = 3 * base + 1.5   # the slack: other work on a shared 2-core CI machine

    t0 = time.monotonic()
    res = await asyncio.gather(*(stream_one(i) for i in range(200)), return_exceptions=True)
    bad = [r for r in res if r is not None]
    report('serve_robust_200_streams', not bad, '%d of 200 failed, first: %r' % (len(bad), bad[:1]))
    print('# 200 streams in %.1f s; probe median %.3f s' % (time.monotonic() - t0, base), flush=True)

    cases = [
        ('bad_json', sending(b'{"prompt": "a",', 400, 'invalid_json')),
        ('not_object', sending(b'"a"', 400, 'invalid_json')),
        ('wrong_type_max_tokens', sending(b'{"prompt": "a", "max_tokens": "ten"}', 400, 'invalid_type')),
        ('wrong_type_stream', sending(b'{"prompt": "a", "stream": "yes"}', 400, 'invalid_type')),
        ('wrong_type_prompt', sending(b'{"prompt": {"a": 1}}', 400, 'invalid_type')),
        ('negative_max_tokens', sending(b'{"prompt": "a", "max_tokens": -5}', 400, 'invalid_value')),
        ('huge_max_tokens', sending(b'{"prompt": "a", "max_tokens": 1000000000000}', 400, None)),
        ('float_max_tokens', sending(b'{"prompt": "a", "max_tokens": 1e300}', 400, 'invalid_type')),
        ('unknown_fields_ignored', sending(b'{"prompt": "a", "max_tokens": 2, "frobnicate": {"x": [1, 2]}, "user": "u"}', 200)),
        ('prompt_over_context', sending(json.dumps({'prompt': 'word ' * (2 * CTX)}).encode(), 400, 'context_length_exceeded')),
        ('invalid_utf8', sending(b'{"prompt": "ab\xff\xfe cd", "max_tokens": 2}', 400, 'invalid_utf8')),
        ('lone_surrogate', sending(b'{"prompt": "ab\\ud800 cd", "max_tokens": 2}', 400, 'invalid_json')),
        ('body_100mb', lambda: huge_body(False)),
        ('body_100mb_chunked', lambda: huge_body(True)),
        ('byte_per_second_headers', lambda: trickle(b'POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ', b'a')),
        ('byte_per_second_body', lambda: trickle(head_bytes('POST', '/v1/completions', {'Content-Length': '1000'}) +
                                                 b'{"prompt": "', b'a')),
        ('idle_keepalive', idle_keepalive),
        ('slow_reader', slow_reader),
    ]
    for name, attack in cases:
        await during(name, attack, limit)

    m = await metrics()
    st, _, _ = await request('GET', '/health')
    report('serve_robust_after', st == 200 and m.get('skein_running_sequences') == 0 and m.get('skein_kv_blocks_used') == 0,
           'health %d, metrics %r' % (st, {k: v for k, v in m.items() if 'running' in k or 'kv_blocks' in k}))


try:
    asyncio.run(asyncio.wait_for(main(), STOP_S))
except asyncio.TimeoutError:
    report('serve_robust', False, 'did not finish within %d s' % STOP_S)
    sys.exit(1)
