# Workshop example: a table of pin values, refreshed every 2 s (GET /; JSON at /pins.json).
#   import pins_app; pins_app.run(pins=(0, 2, 4, 5))
# On the unix port machine.Pin is led_app's in-memory stand-in.
from webserver import App

try:
    from machine import Pin
except ImportError:
    from led_app import Pin


_PINS = (0, 2, 4, 5, 12, 13, 14, 15)


def make(pins=None):
    # Without pins: those of _PINS the chip has (an ESP32-C3 has no 14 or 15); pins given must
    # each exist.
    app = App()
    ios = []
    for n in pins or _PINS:
        try:
            ios.append((n, Pin(n, Pin.IN)))
        except ValueError:  # machine.Pin: "invalid pin"
            if pins:
                raise

    @app.route("/")
    def index(req):
        rows = "".join("<tr><td>%d</td><td>%d</td></tr>" % (n, p.value()) for n, p in ios)
        return ('<!DOCTYPE html><html><head><meta http-equiv="refresh" content="2"><title>Pins</title>'
                "</head><body><table><tr><th>Pin</th><th>Value</th></tr>%s</table></body></html>" % rows)

    @app.route("/pins.json")
    def pins_json(req):
        return {str(n): p.value() for n, p in ios}

    return app


def run(port=80, pins=None):
    make(pins).run(port=port)
