"""ci/*.yml: GitHub Actions workflows, checked here so a broken one fails now, not on the first tag.

Schema: the GitHub workflow JSON schema that check-jsonschema vendors (works offline). Beyond the
schema: every `invoke X` a workflow runs is a task in tasks.py, local reusable workflows exist, the
test job runs .ci/run, and the board-list step really lists boards/*.toml."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workshop.config import PROJECT_ROOT, load_boards

CI = PROJECT_ROOT / "ci"
WORKFLOWS = sorted(CI.glob("*.yml"))


def check_jsonschema() -> str:
    found = Path(sys.executable).parent / "check-jsonschema"
    if found.exists():
        return str(found)
    path = shutil.which("check-jsonschema")
    if not path:
        pytest.fail("check-jsonschema not found: pip install check-jsonschema (it lints ci/*.yml)")
    return path


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def steps(workflow: dict):
    for job_name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, step


def test_there_are_workflows():
    assert {p.name for p in WORKFLOWS} == {"test.yml", "build.yml", "release.yml"}


def test_workflows_match_the_github_schema():
    proc = subprocess.run([check_jsonschema(), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text((CI / "build.yml").read_text().replace("runs-on:", "runs_on:", 1))
    proc = subprocess.run([check_jsonschema(), "--builtin-schema", "vendor.github-workflows", str(broken)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "runs-on" in proc.stdout


def _invoke_tasks() -> set[str]:
    proc = subprocess.run([str(Path(sys.executable).parent / "invoke"), "--list", "--list-format", "json"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json
    return {t["name"] for t in json.loads(proc.stdout)["tasks"]}


def test_every_invoke_command_is_a_task_with_those_options():
    tasks = _invoke_tasks()
    calls = []
    for path in WORKFLOWS:
        for job, step in steps(load(path)):
            for line in step.get("run", "").splitlines():
                m = re.match(r"\s*invoke\s+(.*)", line)
                if m:
                    calls.append((path.name, job, m.group(1)))
    assert {c[2].split()[0] for c in calls} >= {"setup", "build", "release"}
    for name, job, command in calls:
        words = shlex.split(re.sub(r"\$\{\{.*?\}\}", "X", command))
        task = words[0]
        assert task in tasks, f"{name}: job {job} runs 'invoke {task}', which tasks.py does not define"
        # The options exist: invoke --help TASK lists them.
        help_text = subprocess.run([str(Path(sys.executable).parent / "invoke"), "--help", task], cwd=PROJECT_ROOT,
                                   capture_output=True, text=True, timeout=60).stdout
        for option in (w.split("=")[0] for w in words[1:] if w.startswith("--")):
            assert option in help_text, f"{name}: job {job}: 'invoke {task}' has no option {option}"


def test_test_job_runs_the_repository_ci():
    runs = [step.get("run", "") for _, step in steps(load(CI / "test.yml"))]
    assert "bash .ci/run" in runs


def test_local_reusable_workflows_exist_and_are_callable():
    for path in WORKFLOWS:
        for job_name, job in load(path)["jobs"].items():
            uses = job.get("uses", "")
            if uses.startswith("./"):
                target = CI / Path(uses).name
                assert target.is_file(), f"{path.name}: job {job_name} uses {uses}, but ci/{target.name} is missing"
                assert "workflow_call" in load(target)["on"], f"ci/{target.name} cannot be called (no workflow_call)"


def test_release_runs_on_version_tags_and_publishes():
    wf = load(CI / "release.yml")
    assert wf["on"]["push"]["tags"] == ["v*.*.*"]
    used = [step.get("uses", "").split("@")[0] for _, step in steps(wf)]
    assert {"actions/upload-pages-artifact", "actions/deploy-pages", "actions/download-artifact"} <= set(used)
    assert wf["jobs"]["pages"]["permissions"] == {"pages": "write", "id-token": "write"}


def test_the_board_list_step_lists_boards_toml(tmp_path):
    """Run the build workflow's board-list step as the runner would and read its output."""
    (step,) = [s for _, s in steps(load(CI / "build.yml")) if s.get("id") == "boards"]
    out = tmp_path / "github_output"
    env = dict(os.environ, GITHUB_OUTPUT=str(out), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    subprocess.run(["bash", "-e", "-c", step["run"]], cwd=PROJECT_ROOT, env=env, check=True, timeout=60)
    import json
    key, value = out.read_text().strip().split("=", 1)
    assert key == "boards" and json.loads(value) == sorted(load_boards())


def test_actions_are_pinned_to_a_version():
    for path in WORKFLOWS:
        for job, step in steps(load(path)):
            uses = step.get("uses")
            if uses:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", uses), f"{path.name}: job {job}: {uses} is not pinned"


def _step(workflow: str, step_id: str) -> dict:
    (found,) = [s for _, s in steps(load(CI / workflow)) if s.get("id") == step_id]
    return found


def test_the_release_assets_check_passes_on_what_is_attached_and_catches_a_missing_image(release_kwargs, tmp_path):
    """The upload step attaches release/<tag>/'s top-level files (assets are flat: no esp-web-tools/),
    so a plain `sha256sum --check SHA256SUMS` fails on them; the check step verifies what is there
    and that nothing top-level is missing. GitHub is not reachable from the tests: `gh release
    download` is played by a script that copies exactly what the upload step's `find` selects."""
    from workshop import release as rel

    made = rel.make_release("v0.1.0", **release_kwargs)
    upload = next(s for _, s in steps(load(CI / "release.yml")) if s.get("name") == "Attach the files to the GitHub release")
    find = next(line for line in upload["run"].splitlines() if line.strip().startswith("find "))
    select = find.split("|")[0].replace('"release/$TAG"', str(made.directory)).replace("-print0", "-print")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gh = bin_dir / "gh"
    gh.write_text('#!/bin/bash\n# gh release download TAG --dir DIR --clobber: the attached files\n'
                  'set -e; [ "$1 $2" = "release download" ]; mkdir -p "$5"\n'
                  f'{select} | while read -r f; do cp "$f" "$5/"; done\n')
    gh.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TAG="v0.1.0")
    script = _step("release.yml", "check-assets")["run"]

    work = tmp_path / "runner"
    work.mkdir()
    proc = subprocess.run(["bash", "-e", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assets = work / "release-assets"
    assert not (assets / "esp-web-tools").exists() and (assets / "SHA256SUMS").is_file()
    plain = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=assets, capture_output=True, text=True)
    assert plain.returncode != 0, "the flat assets lack esp-web-tools/*: why the step uses --ignore-missing"

    # An image that did not get attached fails the check, naming it.
    gh.write_text(gh.read_text().replace('cp "$f" "$5/"', '[[ "$f" == *ESP32_GENERIC_S3-*.bin ]] || cp "$f" "$5/"'))
    other = tmp_path / "runner2"
    other.mkdir()
    proc = subprocess.run(["bash", "-e", "-c", script], cwd=other, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "not attached: ESP32_GENERIC_S3-20261121-v1.28.0-v0.1.0.bin" in proc.stdout, proc.stdout
