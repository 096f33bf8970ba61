# Test server: the LED and pins example apps' routes plus a demo API, on one port.
# micropython serve_web.py PORT [STATIC_DIR]
# Environment: MAX_CLIENTS (default 12; App's own default is 6), SNDBUF (bytes: each connection's
# SO_SNDBUF, a board's small lwIP send buffer instead of Linux's self-tuning one of up to 4 MB).
import os
import sys
import gc
import asyncio
import asyncio.stream
import led_app
import pins_app
from led_app import Pin
from webserver import App, HTTPError, Response, redirect

port = int(sys.argv[1])
app = led_app.make(pin=2)
app.max_body = 1024
app.timeout_ms = 1500
app.idle_ms = 3000
app.max_clients = int(os.getenv("MAX_CLIENTS") or 12)
if os.getenv("SNDBUF"):
    class _Stream(asyncio.stream.Stream):
        def __init__(self, s, e={}):
            s.setsockopt(1, 7, int(os.getenv("SNDBUF")))  # SOL_SOCKET, SO_SNDBUF (Linux)
            super().__init__(s, e)

    asyncio.stream.Stream = _Stream  # what webserver's accept loop wraps each connection in
pins = pins_app.make(pins=(2, 4, 5))
app.route("/pins")(pins.routes[0][2])
app.route("/pins.json")(pins.routes[1][2])
Pin(4).value(1)
if len(sys.argv) > 2:
    app.static("/static", sys.argv[2])


@app.route("/hello")
def hello(req):
    return "hello"


@app.route("/items/<id>", methods=("GET", "PUT", "DELETE"))
def item(req, id):
    if req.method == "PUT":
        return {"id": id, "got": req.json()}, 201
    if req.method == "DELETE":
        return None
    return {"id": id, "q": req.args}


@app.route("/files/<path:rest>")
def files(req, rest):
    return rest


@app.route("/form", methods=("POST",))
def form(req):
    return {"form": req.form}


@app.route("/old")
def old(req):
    return redirect("/hello", 301)


@app.route("/boom")
def boom(req):
    raise RuntimeError("boom")


@app.route("/teapot")
def teapot(req):
    raise HTTPError(403)


@app.route("/slow")
async def slow(req):
    await asyncio.sleep_ms(300)
    return Response("slow done", 200, {"X-Slow": "1"}, "text/plain")


@app.route("/plain")
def plain(req):
    if "lower" in req.args:
        return Response("plain", 200, {"content-type": "text/plain; charset=utf-8"})
    return "plain", 200, {"Content-Type": "text/plain"}


@app.route("/mem")
def mem(req):
    gc.collect()
    return {"alloc": gc.mem_alloc(), "free": gc.mem_free()}


print("ready", port)
app.run("127.0.0.1", port)
