# esp32 images: the stock ports/esp32/boards/manifest.py of MicroPython v1.28.0, with our stack
# in place of its networking packages. Stock `require("bundle-networking")` would freeze
# micropython-lib's requests/urequests/ntptime and `require("umqtt.*")` its umqtt: ours replace
# them, so the bundle is spelled out here without those.
freeze("$(PORT_DIR)/modules")
include("$(MPY_DIR)/extmod/asyncio")

# bundle-networking minus requests, urequests, ntptime (ours). mip is frozen without its
# require("requests"): it imports our `requests`.
package("mip", base_path="$(MPY_LIB_DIR)/micropython/mip", opt=3)
require("ssl")
require("webrepl")

require("aioespnow")
require("dht")
require("ds18x20")
require("neopixel")
require("onewire")
require("upysh")

include("../../manifest.py")
