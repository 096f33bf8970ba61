# Workshop example: an LED switched from a web page (GET /?LED=ON or /?LED=OFF).
#   import led_app; led_app.run()          # pin 2 (ESP32 DevKit LED); led_app.run(pin=2, invert=True) on ESP8266
# On the unix port machine.Pin is replaced by the stand-in below (state kept in memory).
from webserver import App

try:
    from machine import Pin
except ImportError:
    class Pin:  # unix stand-in for machine.Pin: remembers values per pin number
        OUT = 1
        IN = 0
        values = {}

        def __init__(self, n, mode=0):
            self.n = n

        def value(self, v=None):
            if v is None:
                return Pin.values.get(self.n, 0)
            Pin.values[self.n] = 1 if v else 0

PAGE = """<!DOCTYPE html>
<html><head><meta name="viewport" content="width=device-width"><title>LED</title></head>
<body><h1>LED is <span id="state">%s</span></h1>
<form action="/" method="get">
<button id="on" name="LED" value="ON">ON</button>
<button id="off" name="LED" value="OFF">OFF</button>
</form></body></html>
"""


def make(pin=2, invert=False):
    led = Pin(pin, Pin.OUT)
    app = App()

    @app.route("/")
    def index(req):
        v = req.args.get("LED")
        if v == "ON" or v == "OFF":
            led.value((v == "ON") != invert)
        return PAGE % ("ON" if (led.value() == 1) != invert else "OFF")

    return app


def run(port=80, pin=2, invert=False):
    make(pin, invert).run(port=port)
