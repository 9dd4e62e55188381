"""Shared fixtures: a hermetic environment, and the real jump + target + tunnel topology."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from deployer.sandbox.servers import find_sshd
from deployer.sandbox.topology import Sandbox
from tests.busybox import applet_dir, require, require_busybox

TEST_USER = "deployer-test"  # the unprivileged login used when the suite runs as root
SFTP_USER = "deployer-sftp"  # an account with ForceCommand internal-sftp (made when run as root)
HERMETIC_PREFIXES = ("DEPLOYER_", "SSH_", "GITLAB_", "GITHUB_", "CI_")


@pytest.fixture(autouse=True)
def hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Hide the developer's ~/.ssh, agent and CI variables from every test."""
    for name in list(os.environ):
        if name.startswith(HERMETIC_PREFIXES) or name in ("CI", "GITLAB_CI", "GITHUB_ACTIONS"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session")
def busybox_applets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BusyBox system's /bin: one symlink per applet of Debian's busybox."""
    return applet_dir(tmp_path_factory.mktemp("busybox") / "bin", require_busybox())


def _login_user(name: str = TEST_USER) -> str:
    """Root runs sshd and logs in as an unprivileged user (so permissions mean something)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--create-home", "--shell", "/bin/sh", name],
            check=True,
        )
    # an account with a "!" password is locked and sshd (without PAM) refuses even key logins
    subprocess.run(["usermod", "-p", "*", name], check=True)
    return name


def _sftp_only_config() -> str:
    """The target's sshd_config lines for the SFTP-only account (root only: it is a second user)."""
    if os.geteuid() != 0:
        return ""
    _login_user(SFTP_USER)
    return f"AllowUsers {SFTP_USER}\nMatch User {SFTP_USER}\n  ForceCommand internal-sftp\n"


@dataclass
class Topology:
    """The running sandbox plus what tests need to drive the CLI through it."""

    box: Sandbox
    work: Path  # a directory the login user can write to (deploy paths go here)
    user: str
    sftp_work: Path | None = None  # a directory the SFTP-only account can write to (root only)

    @property
    def env(self) -> dict[str, str]:
        """CI-like environment: key and known hosts as variables, no agent."""
        return {**self.box.environment(), "CI": "true"}

    @property
    def route(self) -> list[str]:
        """--to/--jump through the tunnel."""
        return self.box.route_args()

    @property
    def sftp_route(self) -> list[str]:
        """--to/--jump of the SFTP-only account (ForceCommand internal-sftp), through the tunnel."""
        if self.sftp_work is None:  # fails under CI=true, skips elsewhere
            require("the SFTP-only account is a second user: run the tests as root")
        return [
            "--to", f"{SFTP_USER}@localhost:{self.box.tunnel_port}",
            "--jump", f"{self.user}@127.0.0.1:{self.box.jump.port}",
        ]  # fmt: skip

    def deploy_path(self, name: str) -> Path:
        """A fresh deploy directory location (not created) writable by the login user."""
        return self.work / name

    def give(self, path: Path) -> None:
        """Hand a file or tree the test made over to the login user."""
        for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
            shutil.chown(item, user=self.user)

    def authorize(self, public_line: str) -> None:
        """Let another client key in on both hops (as the sandbox's CI key is)."""
        jump_opts = f'restrict,port-forwarding,permitopen="localhost:{self.box.tunnel_port}"'
        self.box.jump.authorize(public_line, jump_opts)
        self.box.target.authorize(public_line)


@pytest.fixture(scope="session")
def topology() -> Iterator[Topology]:
    """Real OpenSSH: jump sshd, target sshd and ``ssh -N -R`` tunnel, for the whole session."""
    try:
        find_sshd()
    except Exception as exc:  # fail loudly: these tests are the point of the suite
        pytest.fail(f"integration tests need OpenSSH sshd: {exc}", pytrace=False)
    user = _login_user()
    base = Path(tempfile.mkdtemp(prefix="deployer-it-"))
    base.chmod(0o755)
    work = base / "work"
    work.mkdir()
    shutil.chown(work, user=user)
    sftp_config = _sftp_only_config()
    sftp_work = None
    if sftp_config:
        sftp_work = base / "sftp-work"
        sftp_work.mkdir()
        shutil.chown(sftp_work, user=SFTP_USER)
    box = Sandbox(base / "sandbox", user=user, target_config=sftp_config)
    box.start()
    try:
        yield Topology(box, work, user, sftp_work)
    finally:
        box.stop()
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Run:
    """A finished CLI process."""

    status: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr together."""
        return self.stdout + self.stderr


def run_cli(args: list[str], env: Mapping[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 90) -> Run:  # fmt: skip
    """Run ``python -m deployer`` as a user would; return status and output."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "deployer", *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def deployer() -> Callable[..., Run]:
    """The CLI as a subprocess: deployer(args, env=..., cwd=...)."""
    return run_cli
