#!/bin/sh
# skein serve over HTTPS and its dashboard, on the CPU, talking only to 127.0.0.1.
# HTTPS: a self-signed certificate made here with openssl; curl --cacert it reaches /health and
# a completion, curl without it refuses the certificate, plain HTTP to the TLS port fails at
# once (no reply, no hang) and the server keeps serving HTTPS; an unreadable certificate, a
# key given as the certificate, a key that does not match and a certificate without its key
# each stop the server with exit status non-zero and a message naming the file(s).
# Dashboard: GET / is one HTML page with no external script, style or font; headless Chromium
# (Debian's chromium, which make test installs) screenshots it (the PNG decoded here: the
# window's size, the header's colour, many colours: not blank) and runs its playground from
# the query string: the DOM after a virtual-time budget holds the streamed text, equal to the
# API's greedy answer, and the replica table filled from /metrics. SKIP lines when openssl or
# chromium are missing. Prints PASS/FAIL lines.
. tests/lib_serve.sh
command -v curl >/dev/null 2>&1 || { echo "SKIP cli_serve_web: curl not found"; exit 0; }
command -v python3 >/dev/null 2>&1 || { echo "SKIP cli_serve_web: python3 not found"; exit 0; }
KEY=web-key-7
serve_tiny_model "$T/m" 128

# ---- HTTPS ----
# refused NAME WANT ARGS...: skein serve ARGS exits non-zero at once and its message has WANT
refused() {
    n=$1; want=$2; shift 2
    if timeout 30 $SK serve --model "$T/m" --port 0 "$@" >/dev/null 2>"$T/$n.err"; then
        fail "serve_tls_$n" "started"; return
    fi
    if grep -q -- "$want" "$T/$n.err"; then pass "serve_tls_$n"; else fail "serve_tls_$n" "$(tail -2 "$T/$n.err")"; fi
}
if command -v openssl >/dev/null 2>&1 &&
   openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/key.pem" -out "$T/cert.pem" -days 2 -subj /CN=localhost \
       -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1 &&
   openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/key2.pem" -out "$T/cert2.pem" -days 2 -subj /CN=localhost >/dev/null 2>&1
then
    refused unreadable_cert "ssl-certfile: cannot open $T/nope.pem" --ssl-certfile "$T/nope.pem" --ssl-keyfile "$T/key.pem"
    refused key_as_cert "ssl-certfile $T/key.pem: not a PEM file with a certificate" --ssl-certfile "$T/key.pem" --ssl-keyfile "$T/key.pem"
    refused cert_as_key "ssl-keyfile $T/cert.pem: not a PEM file with a private key" --ssl-certfile "$T/cert.pem" --ssl-keyfile "$T/cert.pem"
    refused mismatched_key "ssl-keyfile $T/key2.pem: .*do not match" --ssl-certfile "$T/cert.pem" --ssl-keyfile "$T/key2.pem"
    refused cert_alone "go together" --ssl-certfile "$T/cert.pem"
    if serve_start "$T/tls.log" --model "$T/m" --api-key $KEY --ssl-certfile "$T/cert.pem" --ssl-keyfile "$T/key.pem" &&
       [ "${U%%:*}" = https ]; then
        C="curl -s -m 20 --cacert $T/cert.pem"
        st=$($C -o "$T/tls.out" -w '%{http_code}' -H "Authorization: Bearer $KEY" -d '{"prompt": "static int", "max_tokens": 4, "ignore_eos": true}' $U/v1/completions)
        if [ "$($C -o /dev/null -w '%{http_code}' $U/health)" = 200 ] && [ "$st" = 200 ] &&
           python3 -c "import json,sys; j=json.load(open(sys.argv[1])); assert j['usage']['completion_tokens'] == 4" "$T/tls.out"
        then pass serve_tls_https; else fail serve_tls_https "$st $(cat "$T/tls.out" "$T/tls.log")"; fi
        curl -s -m 20 -o /dev/null $U/health; rc=$?
        [ $rc = 60 ] && pass serve_tls_untrusted_refused || fail serve_tls_untrusted_refused "curl exit $rc, want 60 (certificate not trusted)"
        t0=$(date +%s)
        curl -s -m 20 -o /dev/null "http://${U#https://}/health"; rc=$?
        if [ $rc != 0 ] && [ $rc != 28 ] && [ $(($(date +%s) - t0)) -lt 10 ] && [ "$($C -o /dev/null -w '%{http_code}' $U/health)" = 200 ]
        then pass serve_tls_plain_http_fails; else fail serve_tls_plain_http_fails "curl exit $rc"; fi
        kill $PID; wait $PID 2>/dev/null; PID=""
    else fail serve_tls_start "$(cat "$T/tls.log")"; fi
else
    echo "SKIP serve_tls: openssl is missing or cannot make a certificate (Debian: apt-get install openssl)"
fi

# ---- the dashboard ----
serve_start "$T/log" --model "$T/m" --api-key $KEY || { fail serve_web_start "$(cat "$T/log")"; exit 1; }
st=$(curl -s -m 10 -D "$T/hdr" -o "$T/page.html" -w '%{http_code}' $U/)
if [ "$st" = 200 ] && grep -qi '^content-type: text/html' "$T/hdr" && grep -q 'id="out"' "$T/page.html" &&
   ! grep -Eq '(src|href)="(https?:)?//|@import|url\(' "$T/page.html"
then pass serve_dashboard_page; else fail serve_dashboard_page "status $st: $(head -5 "$T/hdr")"; fi

CHROME=$(command -v chromium || command -v chromium-browser)
if [ -z "$CHROME" ]; then
    echo "SKIP serve_dashboard_screenshot: chromium is not installed (Debian: apt-get install chromium; make test tries)"
    echo "SKIP serve_dashboard_stream: chromium is not installed"
    exit 0
fi
# chrome ARGS...: headless Chromium with a profile of its own, stopped after 60 s
chrome() { timeout 60 "$CHROME" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
    --user-data-dir="$T/profile" --hide-scrollbars "$@" 2>>"$T/chrome.err"; }

chrome --window-size=800,600 --virtual-time-budget=3000 --screenshot="$T/shot.png" "$U/" >/dev/null
cat > "$T/png.py" <<'PY'
# Decodes an 8-bit RGB(A) PNG with the standard library and checks the dashboard's screenshot.
import struct, sys, zlib
data = open(sys.argv[1], 'rb').read()
assert data[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG'
pos, idat = 8, b''
while pos < len(data):
    n, typ = struct.unpack('>I4s', data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    pos += 12 + n
    if typ == b'IHDR':
        w, h, depth, ctype, _, _, interlace = struct.unpack('>IIBBBBB', body)
    elif typ == b'IDAT':
        idat += body
assert (w, h) == (800, 600), (w, h)
assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
bpp = 3 if ctype == 2 else 4
raw, stride = zlib.decompress(idat), w * bpp
rows, prev, i = [], bytearray(stride), 0
for y in range(h):
    f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
    i += 1 + stride
    for x in range(stride):
        a = line[x - bpp] if x >= bpp else 0
        b, c = prev[x], prev[x - bpp] if x >= bpp else 0
        if f == 1: line[x] = (line[x] + a) & 255
        elif f == 2: line[x] = (line[x] + b) & 255
        elif f == 3: line[x] = (line[x] + ((a + b) >> 1)) & 255
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    rows.append(line)
    prev = line
px = lambda x, y: tuple(rows[y][x * bpp:x * bpp + 3])
near = lambda p, q: all(abs(u - v) <= 8 for u, v in zip(p, q))
header, page = (0x1e, 0x3a, 0x8a), (0xf3, 0xf4, 0xf6)
assert near(px(400, 3), header) and near(px(780, 20), header), ('header', px(400, 3), px(780, 20))
assert near(px(3, 80), page), ('page background', px(3, 80))
colours = {px(x, y) for y in range(0, h, 3) for x in range(0, w, 3)}
assert len(colours) >= 50, ('too few colours: blank?', len(colours))
PY
if [ -s "$T/shot.png" ] && python3 "$T/png.py" "$T/shot.png" >"$T/why" 2>&1
then pass serve_dashboard_screenshot; else fail serve_dashboard_screenshot "$(cat "$T/why") $(tail -3 "$T/chrome.err")"; fi

# the playground streams the greedy answer the API gives
body='{"prompt": "static int", "max_tokens": 12, "temperature": 0}'
curl -s -m 30 -H "Authorization: Bearer $KEY" -d "$body" $U/v1/completions >"$T/want.json"
chrome --virtual-time-budget=15000 --dump-dom "$U/?prompt=static%20int&max_tokens=12&temperature=0&key=$KEY&run=1" >"$T/dom.html"
cat > "$T/dom.py" <<'PY'
# The playground's output (id="out": its data-state and text) and the replica table's cells.
import html.parser, json, sys
class P(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(); self.at = None; self.out = ''; self.state = None; self.cells = []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id') == 'out': self.at, self.state = 'out', a.get('data-state')
        elif tag == 'td': self.at = 'td'; self.cells.append('')
    def handle_endtag(self, tag):
        if tag in ('div', 'td'): self.at = None
    def handle_data(self, d):
        if self.at == 'out': self.out += d
        elif self.at == 'td': self.cells[-1] += d
p = P(); p.feed(open(sys.argv[1], encoding='utf-8').read())
want = json.load(open(sys.argv[2]))['choices'][0]['text']
assert p.state == 'done', ('state', p.state, p.out)
assert p.out == want and want, ('page %r, API %r' % (p.out, want))
assert p.cells[:2] == ['m', '0'], ('replica table', p.cells)
PY
if python3 "$T/dom.py" "$T/dom.html" "$T/want.json" >"$T/why" 2>&1
then pass serve_dashboard_stream; else fail serve_dashboard_stream "$(cat "$T/why") $(tail -3 "$T/chrome.err")"; fi
