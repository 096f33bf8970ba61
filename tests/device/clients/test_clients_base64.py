"""base64 under MicroPython gives CPython's base64 results, byte for byte, and its errors."""

from __future__ import annotations

import base64
import json
import random

from clienttools import device_lines

ENCODERS = ["b64encode", "urlsafe_b64encode", "standard_b64encode", "b32encode", "b16encode", "encodebytes"]
DECODERS = {"b64decode": "b64encode", "urlsafe_b64decode": "urlsafe_b64encode",
            "standard_b64decode": "standard_b64encode", "b32decode": "b32encode", "b16decode": "b16encode",
            "decodebytes": "encodebytes"}


def _inputs() -> list[bytes]:
    rng = random.Random(3)
    data = [bytes(rng.getrandbits(8) for _ in range(n)) for n in range(0, 21)]
    return data + [b"\xfb\xff\xfe" * 7, bytes(range(256)), b"x" * 200]


def test_every_codec_matches_cpython(micropython, tmp_path):
    inputs = _inputs()
    vectors = tmp_path / "vectors.json"
    vectors.write_text(json.dumps([d.hex() for d in inputs]))
    out = micropython.run(f"""
import base64, binascii, json
for h in json.load(open({str(vectors)!r})):
    d = binascii.unhexlify(h)
    enc = [getattr(base64, f)(d) for f in {ENCODERS!r}]
    dec = [getattr(base64, f)(getattr(base64, e)(d)) == d for f, e in {list(DECODERS.items())!r}]
    alt = base64.b64encode(d, b"*!"), base64.b64encode(d, b"/+")
    back = base64.b64decode(alt[0], b"*!") == d, base64.b64decode(alt[1], b"/+") == d
    print(repr((enc, dec, alt, back)))
""")
    got = device_lines(out.stdout)
    expected = [([getattr(base64, f)(d) for f in ENCODERS], [True] * len(DECODERS),
                  (base64.b64encode(d, b"*!"), base64.b64encode(d, b"/+")), (True, True)) for d in inputs]
    assert got == expected


def test_str_input_options_and_errors(micropython):
    out = micropython.run("""
import base64
print(repr(base64.b64decode("aGk/Pg==")))
print(repr(base64.urlsafe_b64decode("-_8=")))
print(repr(base64.b32decode("nbswy3dp", casefold=True)))
print(repr(base64.b32decode("0BSWY3DP", map01=b"L")))
print(repr(base64.b16decode("ff00", casefold=True)))
for f, a in (("b64decode", ("ab$d", None, True)), ("b64decode", ("abc",)), ("b32decode", ("NBSWY3D",)),
             ("b32decode", ("NBSWY3D1",)), ("b16decode", ("ff",)), ("b64encode", (b"\xfb\xff\xfe", b"-")),
             ("b64decode", ("-_8=", b"-_-")), ("b64encode", (42,)),   # (altchars not 2 bytes: it dropped '/')
             ("b64decode", ("aGk====", None, True)), ("b64decode", ("aGk=", None, True)),  # validate: ={0,2}$
             ("b64decode", ("aG=k", None, True))):
    try:
        getattr(base64, f)(*a)
        print(repr("accepted"))
    except (ValueError, TypeError) as e:
        print(repr(type(e).__name__))
print(repr(base64.b64encode("°") == base64.b64encode("°".encode())))  # str: as UTF-8 (CPython: TypeError)
""")
    assert device_lines(out.stdout) == [
        base64.b64decode("aGk/Pg=="),
        base64.urlsafe_b64decode("-_8="),
        base64.b32decode("nbswy3dp", casefold=True),
        base64.b32decode("0BSWY3DP", map01=b"L"),
        base64.b16decode("ff00", casefold=True),
        "ValueError", "ValueError", "ValueError", "ValueError", "ValueError", "ValueError", "ValueError", "TypeError",
        "ValueError", "accepted", "ValueError",   # (CPython: binascii.Error, a ValueError; accepted)
        True,
    ]
