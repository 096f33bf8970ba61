"""requests / urequests under MicroPython against a real local HTTP(S) server (http.server)."""

from __future__ import annotations

import json

from clienttools import BIG, CHUNKS, device_lines, free_port

PRELUDE = """
import sys, json
import urequests as requests
BASE = sys.argv[1]
"""


def run(micropython, code: str, base: str, **kw):
    return device_lines(micropython.run(PRELUDE + code, base, **kw).stdout)


def test_get_json_status_headers(micropython, http_peer):
    out = run(micropython, """
r = requests.get(BASE + "/json")
print(repr((r.status_code, r.reason, r.headers["Content-Type"], r.json())))
with requests.get(BASE + "/missing") as r:
    print(repr((r.status_code, r.reason, r.text)))
print(repr(requests.head(BASE + "/json").status_code))
""", http_peer.url)
    assert out == [
        (200, "OK", "application/json", {"ok": True, "unit": "°C"}),
        (404, "Not Found", "nope"),
        200,
    ]


def test_bodies_are_sent_byte_exact_with_their_byte_length(micropython, http_peer):
    out = run(micropython, """
def show(r):
    d = r.json()
    h = d["headers"]
    print(repr((d["method"], d["path"], d["body"], h.get("Content-Length"), h.get("Content-Type"),
                h.get("Host"), h.get("Authorization"), h.get("X-Ws"))))
show(requests.post(BASE + "/echo?x=1", json={"t": "23.5°C"}))
show(requests.put(BASE + "/echo", data="ünïcode"))
show(requests.patch(BASE + "/echo", data=bytes(range(256)), headers={"X-Ws": "1"}))
show(requests.delete(BASE + "/echo", auth=("micro", "pässword")))
def gen():
    yield b"abc"
    yield "°".encode()
show(requests.post(BASE + "/echo", data=gen()))
""", http_peer.url)
    host = http_peer.url.split("//")[1]
    # MicroPython's json.dumps keeps non-ASCII as UTF-8 (16 bytes, 15 characters)
    body = json.dumps({"t": "23.5°C"}, ensure_ascii=False).encode()
    basic = "Basic " + __import__("base64").b64encode("micro:pässword".encode()).decode()
    assert out == [
        ("POST", "/echo?x=1", body.hex(), str(len(body)), "application/json", host, None, None),
        ("PUT", "/echo", "ünïcode".encode().hex(), str(len("ünïcode".encode())), None, host, None, None),
        ("PATCH", "/echo", bytes(range(256)).hex(), "256", None, host, None, "1"),
        ("DELETE", "/echo", "", None, None, host, basic, None),
        ("POST", "/echo", (b"abc" + "°".encode()).hex(), None, None, host, None, None),
    ]
    assert http_peer.seen[-1]["headers"]["Transfer-Encoding"] == "chunked"


def test_redirects_absolute_relative_and_bounded(micropython, http_peer):
    out = run(micropython, """
def show(r):
    d = r.json()
    print(repr((r.status_code, d["method"], d["path"], d["body"])))
show(requests.get(BASE + "/redirect/302?to=/echo?a=1"))
show(requests.get(BASE + "/redirect/301?to=" + BASE + "/echo?b=2"))
show(requests.get(BASE + "/redirect/302?to=echo?c=3"))                   # relative to the directory
show(requests.post(BASE + "/redirect/303?to=/echo", data=b"form"))      # 303: GET, body dropped
show(requests.post(BASE + "/redirect/307?to=/echo", data=b"kept"))      # 307: same method and body
r = requests.get(BASE + "/lowercase")                                  # `location:` in lower case
print(repr((r.status_code, r.json())))
try:
    requests.get(BASE + "/loop")
except ValueError as e:
    print(repr(str(e)))
""", http_peer.url)
    assert out == [
        (200, "GET", "/echo?a=1", ""),
        (200, "GET", "/echo?b=2", ""),
        (200, "GET", "/redirect/echo?c=3", ""),
        (200, "GET", "/echo", ""),
        (200, "POST", "/echo", b"kept".hex()),
        (200, {"ok": True, "unit": "°C"}),
        "too many redirects",
    ]


def test_chunked_and_streamed_responses(micropython, http_peer):
    out = run(micropython, """
r = requests.get(BASE + "/chunked")
print(repr(r.content))
r = requests.get(BASE + "/big", stream=True)
n = 0
h = 0
while 1:
    b = r.raw.read(1000)
    if not b:
        break
    for x in b:
        h = (h * 31 + x) & 0xFFFFFFFF
    n += len(b)
r.close()
print(repr((r.headers["Content-Length"], n, h)))
""", http_peer.url)
    h = 0
    for x in BIG:
        h = (h * 31 + x) & 0xFFFFFFFF
    assert out == [b"".join(CHUNKS), (str(len(BIG)), len(BIG), h)]


def test_network_errors_are_oserrors(micropython, http_peer):
    out = run(micropython, f"""
import time
try:
    requests.get("http://127.0.0.1:{free_port()}/")
except OSError:
    print(repr("refused"))
t = time.ticks_ms()
try:
    requests.get(BASE + "/slow", timeout=0.5)
except OSError:
    print(repr(("timeout", time.ticks_diff(time.ticks_ms(), t) < 2500)))
try:
    requests.get("ftp://127.0.0.1/")
except ValueError as e:
    print(repr(str(e)))
""", http_peer.url)
    assert out == ["refused", ("timeout", True), "Unsupported protocol: ftp:"]


def test_https_get(micropython, https_peer):
    out = run(micropython, """
r = requests.get(BASE + "/json")
print(repr((r.status_code, r.json())))
""", https_peer.url)
    assert out == [(200, {"ok": True, "unit": "°C"})]


def test_requests_leak_no_memory_in_an_esp8266_sized_heap(micropython, http_peer, device_env):
    out = run(micropython, """
import gc
r = requests.get(BASE + "/json")
r.json()
gc.collect()
before = gc.mem_alloc()
for i in range(100):
    with requests.post(BASE + "/echo", json={"i": i}) as r:
        assert r.json()["method"] == "POST"
gc.collect()
print(gc.mem_alloc() - before)
""", http_peer.url, heapsize="38k", env=device_env)
    assert out[0] < 512, f"{out[0]} bytes still held after 100 requests"
