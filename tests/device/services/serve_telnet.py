# Test server: telnet on PORT with user "micro" / password "s3cret" (lockout 1.5 s, or LOCKOUT_MS
# when given), or from the config file when WORKSHOP_CONFIG is set; then the unix stand-in loop
# (wsconfig.serve()).
import sys
import os
import telnet
import wsconfig

port = int(sys.argv[1])
lockout = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
if os.getenv("WORKSHOP_CONFIG"):
    telnet.start(port=port, lockout_ms=lockout, host="127.0.0.1")
else:
    telnet.start("micro", "s3cret", port=port, lockout_ms=lockout, host="127.0.0.1")
wsconfig.serve()
