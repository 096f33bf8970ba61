# Test server under memory pressure: App() with its default limits (max_clients 6), then the heap
# filled with ballast until about FREE bytes are left, the same on every runtime.
# micropython -X heapsize=64k serve_web_tight.py PORT FREE
import sys
import gc
import asyncio
from webserver import App

port = int(sys.argv[1])
app = App()


@app.route("/hello")
def hello(req):
    return "hello"


@app.route("/page")
def page(req):
    return "x" * int(req.args.get("n", "100"))


@app.route("/mem")
def mem(req):
    gc.collect()
    return {"free": gc.mem_free()}




async def main():
    await app.start("127.0.0.1", port)
    gc.collect()
    ballast = None
    left = int(sys.argv[2])
    for size in (1024, 64):
        try:
            while gc.mem_free() > left + size + 64:
                ballast = (bytearray(size), ballast)  # a chain: no list to grow
        except MemoryError:  # free, but no longer in pieces of this size: on with smaller ones
            pass
        gc.collect()
    print("ready", port, gc.mem_free())  # listening, with about FREE bytes left for the clients
    await app.server.wait_closed()

asyncio.run(main())
