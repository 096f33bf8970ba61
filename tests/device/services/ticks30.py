# 30-bit ticks, as ESP8266 and ESP32 count them (MICROPY_PY_TIME_TICKS_PERIOD 2**30), for the unix
# port, whose period is far longer: a test swaps a module's `time` for this one, and jump(ms)
# moves its clock on. 2**29 ms (6.2 days) is the age at which a past moment's ticks_diff turns
# negative: the wrap the modules must survive.
import time as _t

_M = (1 << 30) - 1
_H = 1 << 29
_off = 0


def jump(ms):
    global _off
    _off += ms


def ticks_ms():
    return (_t.ticks_ms() + _off) & _M


def ticks_diff(a, b):
    return ((a - b + _H) & _M) - _H


def ticks_add(a, d):
    return (a + d) & _M


sleep_ms, sleep, time, ticks_us = _t.sleep_ms, _t.sleep, _t.time, _t.ticks_us
