"""--env: variables for the hooks, sent on the session's stdin and masked wherever deployer prints."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from deployer.errors import ExitCode
from tests.integration.helpers import live, make_app, releases

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-Value-7f1e9a"  # what a CI/CD variable would hold
MULTI = "first-line-of-it-4d2\nsecond-line-of-it-9b7"  # a key-like value over two lines


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_a_masked_variable_reaches_every_hook_and_never_the_output(
    topology, deployer, tmp_path: Path
) -> None:
    target = topology.deploy_path(f"env-{tmp_path.name}")
    env = {**topology.env, "API_TOKEN": SECRET, "SIGNING_KEY": MULTI}
    # the hook proves it got the exact value (its digest), echoes it, prints it split across two
    # output chunks a second apart, and passes it to a child process
    hook = (
        'printf %s "$API_TOKEN" | sha256sum; echo "token=$API_TOKEN";'
        ' printf %s "$API_TOKEN" | head -c 6; sleep 1; printf "%s\\n" "${API_TOKEN#??????}";'
        ' sh -c \'echo "child=$API_TOKEN"\'; echo "$SIGNING_KEY"; echo "note=$NOTE"'
    )
    run = deployer(
        ["push", str(make_app(tmp_path, "v1")), *topology.route, "--path", str(target),
         "--env", "API_TOKEN", "--env", "SIGNING_KEY", "--env", "NOTE=plain-note-value",
         "--before", hook, "--after", hook, "--healthcheck", hook, "--json"],
        env=env,
    )  # fmt: skip
    assert run.status == 0, run.output
    for kind in ("before", "after", "healthcheck"):
        assert f"{kind}| {digest(SECRET)}  -" in run.stderr  # the exact value got there
        assert f"{kind}| token=***" in run.stderr
        assert f"{kind}| child=***" in run.stderr  # exported: the hook's children have it
        assert f"{kind}| note=***" in run.stderr  # NAME=VALUE is masked too
    assert run.stderr.count("| ***\n") >= 3 * 3  # split value, and both lines of the key
    for shown in (run.stdout, run.stderr):
        assert SECRET not in shown and SECRET[:6] not in shown and SECRET[6:] not in shown
        assert all(line not in shown for line in MULTI.splitlines())
        assert "plain-note-value" not in shown
    assert json.loads(run.stdout)["ok"] is True
    first = live(target)
    again = deployer(["push", str(make_app(tmp_path, "v2")), *topology.route, "--path", str(target)],
                     env=env)  # fmt: skip
    assert again.status == 0, again.output
    back = deployer(["rollback", *topology.route, "--path", str(target), "--env", "API_TOKEN",
                     "--after", 'echo "reload with $API_TOKEN"'], env=env)  # fmt: skip
    assert back.status == 0, back.output
    assert "after| reload with ***" in back.stderr and SECRET not in back.output
    assert live(target) == first


def test_the_failing_check_output_json_summary_and_error_line_are_masked(
    topology, deployer, deployed, tmp_path: Path
) -> None:
    before, kept = live(deployed), releases(deployed)
    env = {**topology.env, "API_TOKEN": SECRET}
    # a check that prints the value, named with the value pasted into its command line
    check = f'echo "auth with $API_TOKEN failed" >&2; test "{SECRET}" = nope'
    run = deployer(
        ["push", str(make_app(tmp_path, "sick")), *topology.route, "--path", str(deployed),
         "--env", "API_TOKEN", "--healthcheck", check, "--healthcheck-retries", "0", "--json"],
        env=env,
    )  # fmt: skip
    assert run.status == ExitCode.HOOK, run.output
    assert SECRET not in run.stdout + run.stderr
    error = [line for line in run.stderr.splitlines() if line.startswith("deployer: error:")]
    assert error and "healthcheck `echo" in error[0] and 'test "***" = nope' in error[0]
    document = json.loads(run.stdout)
    (outcome,) = document["targets"]
    assert outcome["details"]["healthcheck"]["output"] == ["auth with *** failed"]
    result = tmp_path / "result.json"
    result.write_text(run.stdout)
    summary = subprocess.run(
        [sys.executable, "-m", "deployer.ci.summary", str(result), "--exit-code", str(run.status)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "auth with *** failed" in summary.stdout and SECRET not in summary.stdout
    assert live(deployed) == before and releases(deployed) == kept


def test_a_name_missing_from_the_environment_is_a_usage_error(
    topology, deployer, deployed, tmp_path: Path
) -> None:
    before = live(deployed)
    app = str(make_app(tmp_path, "v9"))
    for args, env in (
        (["--env", "DATABASE_URL"], {}),
        ([], {"DEPLOYER_ENV": "API_TOKEN DATABASE_URL"}),  # the variable: a whitespace list
    ):
        run = deployer(
            ["push", app, *topology.route, "--path", str(deployed), *args],
            env={**topology.env, "API_TOKEN": SECRET, **env},
        )  # fmt: skip
        assert run.status == ExitCode.USAGE, run.output
        errors = [line for line in run.stderr.splitlines() if line.startswith("deployer: error:")]
        assert len(errors) == 1 and "DATABASE_URL is not set" in errors[0], run.stderr
        assert "Traceback" not in run.stderr and SECRET not in run.stderr
    config = tmp_path / "deployer.toml"
    config.write_text('env = ["API_TOKEN", "MISSING_ONE"]\n')
    run = deployer(
        ["push", app, *topology.route, "--path", str(deployed)],
        env={**topology.env, "API_TOKEN": SECRET}, cwd=tmp_path,
    )  # fmt: skip
    assert run.status == ExitCode.USAGE and "MISSING_ONE is not set" in run.stderr, run.output
    refused = deployer(
        ["push", app, *topology.route, "--path", str(deployed),
         "--env", "SSH_PRIVATE_KEY"], env=topology.env,
    )  # fmt: skip
    assert refused.status == ExitCode.USAGE and "never passes its own secrets" in refused.stderr
    assert live(deployed) == before


def _processes() -> dict[int, tuple[int, bytes, bytes]]:
    """Every process's owner, command line and environment (as root: all of them)."""
    seen = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                seen[int(entry.name)] = (
                    entry.stat().st_uid,
                    (entry / "cmdline").read_bytes(),
                    (entry / "environ").read_bytes(),
                )
            except OSError:
                continue  # gone meanwhile
    return seen


def test_values_are_in_no_command_line_and_no_file_on_the_target(
    topology, deployer, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test reads every process's environment: run the suite as root")
    target = topology.deploy_path(f"env-ps-{tmp_path.name}")
    marker = topology.deploy_path(f"env-ps-{tmp_path.name}.started")
    done: dict[str, object] = {}

    def push() -> None:
        done["run"] = deployer(
            ["push", str(make_app(tmp_path, "v1")), *topology.route, "--path", str(target),
             "--env", "API_TOKEN", "--before", f"touch {marker}; sleep 4; echo slept"],
            env={**topology.env, "API_TOKEN": SECRET},
        )  # fmt: skip

    worker = threading.Thread(target=push)
    worker.start()
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the hook never started"
    snapshot = _processes()
    worker.join(timeout=90)
    run = done["run"]
    assert run.status == 0, run.output  # type: ignore[attr-defined]
    value = SECRET.encode()
    assert not [pid for pid, (_, cmdline, _) in snapshot.items() if value in cmdline]
    # on the target (the login user's processes; deployer itself holds the value as the job
    # does) only the hook and what it started have it in their environment: not sshd, not the
    # login shell, not the script around the hook
    login = pwd.getpwnam(topology.user).pw_uid
    holders = [cmdline.split(b"\0") for uid, cmdline, environ in snapshot.values()
               if uid == login and value in environ]  # fmt: skip
    assert holders, "the hook's own environment should hold the variable"
    for argv in holders:
        program = os.path.basename(argv[0])
        assert program in (b"timeout", b"sh", b"sleep") and (
            program == b"sleep" or f"touch {marker}".encode() in b" ".join(argv)
        ), argv
    left = subprocess.run(
        ["grep", "-rlF", "--", SECRET, str(target), str(Path(os.path.expanduser(f"~{topology.user}"))),
         str(topology.box.target.home)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert left.returncode == 1 and left.stdout == "", left.stdout


def test_exec_takes_variables_and_masks_its_streamed_output(topology, deployer) -> None:
    command = (
        'printf %s "$API_TOKEN" | head -c 4; sleep 1; printf "%s\\n" "${API_TOKEN#????}";'
        ' echo "err $API_TOKEN" >&2; exit 3'
    )
    run = deployer(
        ["exec", *topology.route, "--env", "API_TOKEN", "--", command],
        env={**topology.env, "API_TOKEN": SECRET},
    )  # fmt: skip
    assert run.status == 3, run.output
    assert run.stdout == "***\n" and "err ***" in run.stderr
    assert SECRET[:4] not in run.stdout + run.stderr
    as_json = deployer(
        ["exec", *topology.route, "--env", "API_TOKEN", "--json", "--", command],
        env={**topology.env, "API_TOKEN": SECRET},
    )  # fmt: skip
    (outcome,) = json.loads(as_json.stdout)["targets"]
    assert outcome["details"]["stdout"] == "***\n" and outcome["details"]["stderr"] == "err ***\n"
