# urequests: the tutorials' name for `requests` (`import urequests as requests`).
# Lazy: attributes come from `requests` on first use, without a second copy of its globals.


def __getattr__(attr):
    import requests

    return getattr(requests, attr)
