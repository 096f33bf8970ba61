# esp8266 images (ESP8266_GENERIC, 2 MiB): the stock boards/manifest.py + manifest_2MiB.py of
# MicroPython v1.28.0, with our stack in place of bundle-networking's requests/urequests/ntptime
# and micropython-lib's umqtt.
freeze("$(PORT_DIR)/modules")

package("mip", base_path="$(MPY_LIB_DIR)/micropython/mip", opt=3)
require("ssl")
require("webrepl")

require("dht")
require("ds18x20")
require("neopixel")
require("onewire")

# manifest_2MiB.py
include("$(MPY_DIR)/extmod/asyncio")
require("ssd1306")
require("upysh")

include("../../manifest.py")
