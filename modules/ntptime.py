# ntptime: set the clock from an NTP (SNTP) server, the micropython-lib API.
#
# Beyond micropython-lib's: `port` is settable; the reply must answer our request (its origin
# timestamp echoes our nonce), come from a server and be synchronised, else OSError: a stale,
# spoofed or kiss-of-death packet never sets the clock. Errors are OSError, so the tutorials'
# `except OSError` covers a missing network, a timeout and a bad reply alike.
import socket
import struct
from errno import EIO, ETIMEDOUT
from time import gmtime, ticks_diff, ticks_ms, ticks_us

# Configurable at run time: ntptime.host = "10.0.0.2"; ntptime.timeout = 2
host = "pool.ntp.org"
port = 123
timeout = 1

# 2024-01-01 00:00:00 as an NTP timestamp: anything smaller has wrapped (era 1, after 2036).
_MIN_NTP = 3913056000


def time():
    q = bytearray(48)
    q[0] = 0x1B  # LI 0, version 3, mode 3 (client)
    struct.pack_into("!I", q, 44, ticks_us() & 0xFFFFFFFF | 1)  # transmit timestamp: our nonce
    addr = socket.getaddrinfo(host, port)[0][-1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(q, addr)
        t = ticks_ms()
        while 1:  # one deadline for the whole exchange: a flood of other datagrams cannot extend it
            if timeout is not None:  # None: wait for ever, as micropython-lib's
                left = timeout * 1000 - ticks_diff(ticks_ms(), t)
                if left <= 0:
                    raise OSError(ETIMEDOUT)
                s.settimeout(left / 1000)
            msg = s.recv(48)
            if len(msg) == 48 and msg[24:32] == q[40:48]:
                break  # a reply to this request; anything else (a late earlier reply) is skipped
    finally:
        s.close()
    if msg[0] & 7 != 4 or msg[0] >> 6 == 3 or not 0 < msg[1] < 16:
        raise OSError(EIO)  # not a server, unsynchronised (LI 3, stratum 16), or kiss-of-death (stratum 0)
    val = struct.unpack_from("!I", msg, 40)[0]
    if val < _MIN_NTP:
        val += 0x100000000
    epoch = gmtime(0)[0]
    if epoch == 2000:
        return val - 3155673600
    if epoch == 1970:
        return val - 2208988800
    raise OSError(EIO)


# The RTC keeps UTC: MicroPython has no time zones.
def settime():
    t = time()
    import machine

    tm = gmtime(t)
    machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))
