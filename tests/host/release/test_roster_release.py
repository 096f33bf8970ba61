"""roster --release V: images are compared with the release's index.json inputs hashes."""

from __future__ import annotations

import json

import pytest

from workshop import roster
from workshop.release import make_release


def test_outdated_against_a_release_index(release_kwargs, tmp_path):
    made = make_release("v0.1.0", **release_kwargs)
    index = json.loads((made.directory / "index.json").read_text())
    want = {b["board"]: b["inputs_sha256"] for b in index["boards"]}
    exp = roster.expected_from_release("v0.1.0", root=tmp_path)
    assert dict(exp.inputs) == want and exp.source.endswith("index.json")
    board, inputs = next(iter(want.items()))
    r = roster.Roster(exp)
    r.ingest_mqtt("workshop/a/status", json.dumps({"state": "online", "board": board, "inputs": inputs}).encode())
    r.ingest_mqtt("workshop/b/status", json.dumps({"state": "online", "board": board, "inputs": "f" * 64}).encode())
    assert [(x.hostname, x.outdated) for x in r.rows()] == [("a", False), ("b", True)]


def test_a_missing_release_is_a_clear_error(tmp_path):
    with pytest.raises(roster.RosterError, match=r"release v9.9.9: no index.json"):
        roster.expected_from_release("v9.9.9", root=tmp_path)
