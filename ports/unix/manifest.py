# The UNIX board: the stock variants/standard manifest of MicroPython v1.28.0 with our stack.
# Stock require("mip-cmdline") pulls micropython-lib's requests, which ours replaces, so mip is
# frozen without it (`micropython -m mip` is not available on this board; `import mip` is).
add_library("unix-ffi", "$(MPY_LIB_DIR)/unix-ffi")
package("mip", base_path="$(MPY_LIB_DIR)/micropython/mip", opt=3)
require("ssl")
include("$(MPY_DIR)/extmod/asyncio")

include("../../manifest.py")
