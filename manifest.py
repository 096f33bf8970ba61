# The workshop networking stack: what every image freezes, on every port.
# Port manifests (ports/<port>/manifest.py) include this file after their stock content,
# minus the stock copies of what is listed here (two frozen files with one target path conflict).
# Paths are relative to this file; `invoke check` resolves it with MicroPython's manifestfile.py.

# Clients (tutorial APIs: `from umqtt.simple import MQTTClient`, `import urequests as requests`).
package("umqtt", base_path="modules")
module("urequests.py", base_path="modules")
module("requests.py", base_path="modules")
module("base64.py", base_path="modules")
module("ntptime.py", base_path="modules")

# Services, started from /workshop.json by the start-up module boot.py imports.
module("wifi.py", base_path="modules")
module("mdns.py", base_path="modules")
module("telnet.py", base_path="modules")
module("webserver.py", base_path="modules")
module("announce.py", base_path="modules")
module("workshop_boot.py", base_path="modules")
module("wsconfig.py", base_path="modules")
module("led_app.py", base_path="modules")
module("pins_app.py", base_path="modules")

# Build identity for smoke: `invoke build` generates it and names its folder; `invoke check` has none.
import os

if os.environ.get("WORKSHOP_BUILD_IDENTITY"):
    module("_workshop_build.py", base_path=os.environ["WORKSHOP_BUILD_IDENTITY"])
