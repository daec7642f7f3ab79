#!/usr/bin/env python3
"""Resident memory of a running `skein serve` over many requests (docs/benchmarks.md,
"Serving: resident memory over 10,000 requests"):

    python3 scripts/serve_rss.py URL PID [--requests 10000] [--every 1000] [--clients 4]

Sends the requests from --clients threads over keep-alive connections to 127.0.0.1 only: a mix of
plain and streamed completions with distinct prompts and 1 to 16 tokens, every fifth with
logprobs, every seventh cancelled by closing the connection after its first event. After each
--every answered requests it prints one line: requests, the server's VmRSS in kB, and the sum over
its children (replica processes) in kB. Standard library only."""
import argparse, http.client, json, os, threading


def rss_kb(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return 0


def children(pid):
    """The processes pid's threads forked (replica processes are forked by their threads)."""
    kids = []
    for tid in os.listdir('/proc/%d/task' % pid):
        try:
            with open('/proc/%d/task/%s/children' % (pid, tid)) as f:
                kids += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return kids


def one(conn, i):
    """Request i on conn; returns the connection to use next (a new one after a cancel)."""
    stream, cancel = i % 2 == 1, i % 7 == 0
    body = {'prompt': 'request %d asks about %s' % (i, ' '.join('w%d' % (i * k % 97) for k in range(i % 23))),
            'max_tokens': 1 + i % 16, 'temperature': 0.7, 'seed': i, 'stream': stream or cancel}
    if i % 5 == 0:
        body['logprobs'] = 2
    conn.request('POST', '/v1/completions', json.dumps(body), {'Content-Type': 'application/json'})
    resp = conn.getresponse()
    if cancel:
        resp.fp.readline()
        conn.close()
        return None
    data = resp.read()
    assert resp.status == 200, (resp.status, data[:200])
    return conn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('url')
    ap.add_argument('pid', type=int)
    ap.add_argument('--requests', type=int, default=10000)
    ap.add_argument('--every', type=int, default=1000)
    ap.add_argument('--clients', type=int, default=4)
    a = ap.parse_args()
    host, port = a.url.split('//')[1].split(':')
    lock, done, nxt = threading.Lock(), [0], [0]

    def worker():
        conn = None
        while True:
            with lock:
                if nxt[0] >= a.requests:
                    return
                i = nxt[0]
                nxt[0] += 1
            conn = one(conn or http.client.HTTPConnection(host, int(port), timeout=60), i)
            with lock:
                done[0] += 1
                if done[0] % a.every == 0:
                    kids = sum(rss_kb(c) for c in children(a.pid))
                    print('%d %d %d' % (done[0], rss_kb(a.pid), kids), flush=True)

    print('requests server_rss_kb children_rss_kb', flush=True)
    print('0 %d %d' % (rss_kb(a.pid), sum(rss_kb(c) for c in children(a.pid))), flush=True)
    ts = [threading.Thread(target=worker) for _ in range(a.clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


if __name__ == '__main__':
    main()
