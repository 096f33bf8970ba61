"""Report and output files are checked before the work starts: a folder, or a path in a missing
folder, is one clear error (no traceback, no board touched), never a crash after the work is done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workshop import devconfig, fleet

REPO = Path(__file__).resolve().parents[3]


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "invoke"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def an_image(folder: Path) -> Path:
    """A bare --image file (its first byte the ESP image magic): enough for the option checks."""
    img = folder / "firmware.bin"
    img.write_bytes(b"\xe9" + bytes(4095))
    return img


CASES = [
    ("flash", "--image", "{img}", "--offset", "0x1000", "--ports", "/dev/null", "--report", "{out}"),
    ("flash", "--image", "{img}", "--offset", "0x1000", "--ports", "/dev/null", "--provision", "{cfg}",
     "--json-out", "{out}"),
    ("smoke", "--ports", "/dev/null", "--board", "UNIX", "--json-out", "{out}"),
    ("smoke", "--ports", "/dev/null", "--board", "UNIX", "--junit", "{out}"),
    ("registry", "--registry", "{db}", "--csv", "{out}"),
    ("check", "--board", "UNIX", "--json-out", "{out}"),
    ("fleet", "exec", "print(1)", "--all", "--mqtt", "127.0.0.1:1", "--no-mdns", "--report", "{out}"),
    ("station", "--image", "{img}", "--offset", "0x1000", "--ports-dir", "{tmp}", "--registry", "{db}",
     "--json-out", "{out}"),   # (a registry of the test's: the default is workshop.db in the checkout)
]


@pytest.mark.parametrize("where", ["folder", "under a file"])
@pytest.mark.parametrize("args", CASES, ids=lambda a: " ".join(a[:2]))
def test_an_unwritable_output_path_is_refused_up_front(tmp_path, args, where):
    from workshop.registry import Registry

    img = an_image(tmp_path)
    cfg = tmp_path / "ws.toml"
    cfg.write_text('hostname = "ws-{mac4}"\n')
    db = tmp_path / "workshop.db"
    Registry(db)
    out = tmp_path / "out"
    out.mkdir()
    target = out if where == "folder" else img / "x.json"
    values = {"img": str(img), "cfg": str(cfg), "db": str(db), "out": str(target), "tmp": str(tmp_path / "ports")}
    (tmp_path / "ports").mkdir()
    proc = invoke(*(a.format(**values) for a in args))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    message = " ".join(proc.stderr.split())
    assert "error:" in message and ("is a folder" if where == "folder" else "is a file, not a folder") in message, message
    assert not list(out.iterdir())


@pytest.mark.parametrize("args", [
    ("check", "--board", "UNIX", "--json-out", "{out}"),
    ("smoke", "--ports", "/dev/null", "--board-file", "--board", "UNIX", "--json-out", "{out}"),
    ("smoke", "--ports", "/dev/null", "--board-file", "--board", "UNIX", "--junit", "{out}"),
    ("registry", "--registry", "{db}", "--csv", "{out}"),
], ids=lambda a: " ".join(a[:1] + a[-2:-1]))
def test_an_output_file_that_fails_when_written_is_one_error_after_the_results(tmp_path, args):
    """A path that passes the checks but cannot be written when the work is done (a full disk; here
    /proc, where no file can be made) was a traceback, and smoke's table was never shown."""
    from workshop.registry import Registry

    db = tmp_path / "workshop.db"
    Registry(db)
    out = "/proc/workshop-kit-test.out"
    proc = invoke(*(a.format(out=out, db=db) for a in args))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    message = " ".join(proc.stderr.split())
    assert f"error: {args[-2]} {out}: not written:" in message, message
    if args[0] == "smoke":
        assert "/dev/null" in proc.stdout and "board(s) passed" in proc.stdout, proc.stdout   # the results first


@pytest.mark.parametrize("args", [
    ("flash", "--image", "{img}", "--offset", "0x1000", "--ports", "/dev/null", "--logs", "{logs}"),
    ("station", "--image", "{img}", "--offset", "0x1000", "--ports-dir", "{tmp}", "--registry", "{db}",
     "--logs", "{logs}"),
    ("devices", "--identify", "--ports", "/dev/null", "--logs", "{logs}"),
], ids=lambda a: a[0])
def test_a_logs_folder_under_a_file_is_refused_before_any_board(tmp_path, args):
    """--logs under a file: each board's row said `NotADirectoryError` and the report was lost."""
    img = an_image(tmp_path)
    (tmp_path / "ports").mkdir()
    proc = invoke(*(a.format(img=img, tmp=tmp_path / "ports", logs=img / "logs", db=tmp_path / "workshop.db")
                    for a in args))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert f"error: --logs {img / 'logs'}: {img} is a file, not a folder" in " ".join(proc.stderr.split())
    assert "/dev/null" not in proc.stdout                               # no board row: nothing was tried


def test_flash_json_out_without_the_station_is_refused_not_ignored(tmp_path):
    img = an_image(tmp_path)
    proc = invoke("flash", "--image", str(img), "--offset", "0x1000", "--ports", "/dev/null", "--json-out",
                  str(tmp_path / "events.jsonl"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert "--json-out goes with --provision or --files" in " ".join(proc.stderr.split())
    assert not (tmp_path / "events.jsonl").exists()


def test_output_file_rules(tmp_path):
    assert devconfig.output_file(tmp_path / "r.json", "--report") == tmp_path / "r.json"
    with pytest.raises(devconfig.DevConfigError, match=r"^--report .*: is a folder"):
        devconfig.output_file(tmp_path, "--report")
    assert devconfig.output_file(tmp_path / "new" / "r.json", "--report") == tmp_path / "new" / "r.json"
    assert not (tmp_path / "new").exists()                  # made when written, not when checked
    (tmp_path / "file").write_text("x")
    with pytest.raises(devconfig.DevConfigError, match="file, not a folder"):
        devconfig.output_file(tmp_path / "file" / "sub" / "r.json", "--report")


def test_a_fleet_report_that_cannot_be_written_leaves_no_temporary_file(tmp_path):
    (tmp_path / "r.json").mkdir()
    report = fleet.FleetReport("exec", "k", 0.0)
    with pytest.raises(OSError):
        fleet.write_report(report, tmp_path / "r.json")
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    fleet.write_report(report, tmp_path / "ok.json")
    assert json.loads((tmp_path / "ok.json").read_text())["command"] == "exec"


def test_a_summary_line_on_redirected_stderr_is_whole(tmp_path):
    """flash --json sends its summary to stderr: redirected, it was cut at 80 columns (a log path
    split in two), where stdout's lines stay whole."""
    logs = tmp_path / ("a-long-folder-name-" * 4) / "logs"
    proc = invoke("flash", "--image", str(an_image(tmp_path)), "--offset", "0x1000", "--ports", "socket://127.0.0.1:9",
                  "--logs", str(logs), "--json")
    line = next((x for x in proc.stderr.splitlines() if " verified in " in x), "")
    assert line.startswith("0/1 verified in ") and line.endswith(f"; esptool logs in {logs}"), proc.stderr


PROBE = '''
import sys
sys.path.insert(0, {repo!r})
from tasks import Exit, task

@task()
def probe(c):
    print("a short report")     # (buffered: it meets the gone reader at the flush)
    raise Exit(code=1)          # a task that failed after its output (fleet --json, a board failed)
'''


@pytest.mark.parametrize("args", [("boards", "--json"), ("-r", "{tmp}", "-c", "probe_tasks", "probe")],
                         ids=["ok", "failing after its output"])
def test_a_reader_that_goes_away_ends_a_listing_quietly(args, tmp_path):
    """`roster --watch --json | head`: the reader's exit was a BrokenPipeError traceback; a task
    ending in a failure (exit 1) after its output, "Exception ignored" and exit 120."""
    (tmp_path / "probe_tasks.py").write_text(PROBE.format(repo=str(REPO)))
    args = tuple(a.format(tmp=tmp_path) for a in args)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}   # buffered, as for most users
    proc = subprocess.Popen([str(Path(sys.executable).parent / "invoke"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()                  # | head that has had enough before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err and "Exception ignored" not in err, err
