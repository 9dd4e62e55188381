"""deployer sandbox: the whole story on loopback, with real OpenSSH, in under a minute.

Starts a jump sshd, a target sshd and a reverse tunnel (``ssh -N -R``), then runs the real CLI
three times through jump + tunnel: a first deploy, a second one, and one whose healthcheck fails
and is switched back. It ends with the release list and says where to look.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from deployer.environment import child_environment
from deployer.errors import ExitCode, HookError
from deployer.sandbox.topology import Sandbox


def _sample_artifact(root: Path, version: str) -> Path:
    """A tiny web app: static page, a migrate script and a health file."""
    app = root / "artifacts" / version
    (app / "bin").mkdir(parents=True, exist_ok=True)
    (app / "public").mkdir(exist_ok=True)
    (app / "public" / "index.html").write_text(f"<h1>hello from {version}</h1>\n")
    (app / "VERSION").write_text(version + "\n")
    migrate = app / "bin" / "migrate"
    migrate.write_text('#!/bin/sh\necho "migrating $(cat VERSION) in $PWD"\n')
    migrate.chmod(0o755)
    return app


def say(text: str) -> None:
    """A sandbox narration line, bold on a terminal."""
    bold = sys.stderr.isatty()
    print(f"\x1b[1m{text}\x1b[0m" if bold else text, file=sys.stderr, flush=True)


def _deployer(args: list[str], env: dict[str, str]) -> int:
    """Run the real CLI as a user would, in a child process."""
    return subprocess.call([sys.executable, "-m", "deployer", *args], env=env)


def run_demo(directory: Path, *, keep_running: bool) -> None:
    """Bring the sandbox up, deploy three times (the last one rolls back) and show the result."""
    directory.mkdir(parents=True, exist_ok=True)
    box = Sandbox(directory)
    deploy_path = str(box.root / "srv" / "app")
    say(f"sandbox: starting jump sshd, target sshd and an ssh -R tunnel under {box.root}")
    with box:
        say(
            f"sandbox: jump sshd on 127.0.0.1:{box.jump.port}; target sshd on 127.0.0.1:{box.target.port},"
            f" reachable only as localhost:{box.tunnel_port} on the jump host through the tunnel"
        )
        # the sandbox's own key and known hosts, never the caller's secrets
        env = child_environment(os.environ, extra={**box.environment(), "CI": "true"})
        env.pop("SSH_AUTH_SOCK", None)
        route = box.route_args()
        common = [*route, "--path", deploy_path, "--before", "./bin/migrate"]
        steps = [
            ("v1", ["--healthcheck", "grep -q v1 public/index.html"], 0),
            ("v2", ["--healthcheck", "grep -q v2 public/index.html"], 0),
            ("v3-broken", ["--healthcheck", "false", "--healthcheck-retries", "0"], ExitCode.HOOK),
        ]
        for version, extra, expected in steps:
            artifact = _sample_artifact(box.root, version)
            say(f"\nsandbox: $ deployer push {artifact} {' '.join(common + extra)}")
            status = _deployer(["push", str(artifact), *common, *extra], env)
            if status != expected:
                raise HookError(
                    f"sandbox: deploying {version} exited {status}, expected {expected}"
                )
            if expected:
                say(
                    f"sandbox: as intended, {version} failed its healthcheck and was switched back (exit {status})"
                )
        say("\nsandbox: $ deployer releases ...")
        _deployer(["releases", *route, "--path", deploy_path], env)
        live = Path(deploy_path) / "current"
        say(
            "\nsandbox: done. Look at:\n"
            f"  {live} -> {os.readlink(live)}\n"
            f"  cat {live}/public/index.html\n"
            f"  cat {deploy_path}/.deployer/history\n"
            f"  sshd logs: {box.jump.log} {box.target.log}; tunnel: {box.tunnel_log}"
        )
        if keep_running:
            say(
                "\nsandbox: servers keep running; try it yourself (Ctrl-C stops them):\n"
                f'  export SSH_PRIVATE_KEY="$(cat {box.ci_key})"\n'
                f"  export SSH_KNOWN_HOSTS=\"$(deployer keyscan {' '.join(route)} | grep -v '^#')\"\n"
                f"  deployer releases {' '.join(route)} --path {deploy_path}"
            )
            with contextlib.suppress(KeyboardInterrupt):
                if box.jump.process is not None:
                    box.jump.process.wait()
