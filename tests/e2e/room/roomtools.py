"""Shared by the room tests and their fixtures (a module, not conftest: conftest names collide across folders)."""

PASSWORD = "tn-s3cret"     # every room board's telnet password
