# base64: RFC 4648 Base64, Base32 and Base16 on top of binascii, the CPython API.
#
# Small and bytes-first for devices: no `re` (micropython-lib's imports it), urlsafe_b64decode
# works, altchars translate with bytes.replace. Errors are ValueError (binascii.Error on CPython
# is a ValueError too). Encoders and decoders take bytes or str (as UTF-8; CPython's encoders
# refuse str, MicroPython's binascii does not, and checking would cost every call).
import binascii

MAXLINESIZE = 76
MAXBINSIZE = 57  # MAXLINESIZE // 4 * 3

_B32 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def _bytes(s):
    if isinstance(s, str):
        return s.encode()
    if isinstance(s, (bytes, bytearray, memoryview)):
        return s
    raise TypeError("expected bytes or str")


def _tr(s, f, t):
    # Map f[0] -> t[0] and f[1] -> t[1] in s, in an order that cannot remap a result.
    if len(f) != 2 or len(t) != 2:
        raise ValueError("altchars: 2 bytes")
    a, b = f[0:1], f[1:2]
    x, y = t[0:1], t[1:2]
    if x != b:
        return s.replace(a, x).replace(b, y)
    if y != a:
        return s.replace(b, y).replace(a, x)
    return s.replace(a, b"\0").replace(b, y).replace(b"\0", x)  # a swap


def b64encode(s, altchars=None):
    e = binascii.b2a_base64(s, newline=False)
    if altchars is not None:
        e = _tr(e, b"+/", _bytes(altchars))
    return e


def b64decode(s, altchars=None, validate=False):
    s = _bytes(s)
    if altchars is not None:
        s = _tr(bytes(s), _bytes(altchars), b"+/")
    if validate:
        pad = 0
        for c in s:
            if c == 61:  # "=": at most two, at the end (as micropython-lib's and CPython's ={0,2}$)
                pad += 1
                if pad < 3:
                    continue
            elif not pad and (65 <= c <= 90 or 97 <= c <= 122 or 48 <= c <= 57 or c == 43 or c == 47):
                continue
            raise ValueError("non-base64 digit found")
    return binascii.a2b_base64(s)


def standard_b64encode(s):
    return b64encode(s)


def standard_b64decode(s):
    return b64decode(s)


def urlsafe_b64encode(s):
    return b64encode(s, b"-_")


def urlsafe_b64decode(s):
    return b64decode(s, b"-_")


def b32encode(s):
    s = _bytes(s)
    out = bytearray()
    acc = 0
    bits = 0
    for c in s:
        acc = (acc << 8 | c) & 0xFFF
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append(_B32[acc >> bits & 31])
    if bits:
        out.append(_B32[acc << (5 - bits) & 31])
    while len(out) & 7:
        out.append(61)
    return bytes(out)


def b32decode(s, casefold=False, map01=None):
    s = _bytes(s)
    if map01 is not None:
        s = bytes(s).replace(b"0", b"O").replace(b"1", _bytes(map01))
    if casefold:
        s = bytes(s).upper()
    if len(s) & 7:
        raise ValueError("incorrect padding")
    n = len(s)
    while n and s[n - 1] == 61:
        n -= 1
    if len(s) - n not in (0, 1, 3, 4, 6):
        raise ValueError("incorrect padding")
    out = bytearray()
    acc = 0
    bits = 0
    for i in range(n):
        c = s[i]
        if 65 <= c <= 90:  # A-Z
            c -= 65
        elif 50 <= c <= 55:  # 2-7
            c -= 24
        else:
            raise ValueError("non-base32 digit found")
        acc = (acc << 5 | c) & 0xFFF
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append(acc >> bits & 0xFF)
    return bytes(out)


def b16encode(s):
    return binascii.hexlify(s).upper()


def b16decode(s, casefold=False):
    s = _bytes(s)
    if not casefold:
        for c in s:
            if 97 <= c <= 102:
                raise ValueError("non-base16 digit found")
    return binascii.unhexlify(s)


def encodebytes(s):
    out = bytearray()
    mv = memoryview(s)
    for i in range(0, len(s), MAXBINSIZE):
        out.extend(binascii.b2a_base64(mv[i : i + MAXBINSIZE]))
    return bytes(out)


def decodebytes(s):
    return binascii.a2b_base64(s)


def encode(input, output):
    while 1:
        s = input.read(MAXBINSIZE)
        if not s:
            return
        while len(s) < MAXBINSIZE:
            ns = input.read(MAXBINSIZE - len(s))
            if not ns:
                break
            s += ns
        output.write(binascii.b2a_base64(s))


def decode(input, output):
    while 1:
        line = input.readline()
        if not line:
            return
        output.write(binascii.a2b_base64(line))
