"""The pure parts of the SFTP path: snapshots, shared paths, parents, hooks refused, transports."""

from __future__ import annotations

import pytest

from deployer.deploy.hooks import HookSettings
from deployer.deploy.settings import PushSettings
from deployer.deploy.sftp.build import Shared
from deployer.deploy.sftp.target import refuse_hooks
from deployer.deploy.sftp.tree import parse_snapshot, snapshot_text
from deployer.deploy.transport import by_transport
from deployer.errors import ConfigError, ExitCode, NoShellError
from deployer.remote.files import parents
from deployer.remote.permissions import Permissions

PUBLISHED = 1_700_000_000


def test_an_sftp_snapshot_reads_back_what_it_recorded() -> None:
    text = snapshot_text(PUBLISHED, {"a/b.txt": (12, PUBLISHED - 60), "c": (0, PUBLISHED - 1)})
    assert text.splitlines()[1] == "0|12|2023-11-14 22:12:20.000000000 +0000|-|./a/b.txt"
    assert parse_snapshot(text) == {"a/b.txt": (12, PUBLISHED - 60), "c": (0, PUBLISHED - 1)}


def test_entries_as_new_as_the_marker_are_not_vouched_for() -> None:
    text = snapshot_text(PUBLISHED, {"same-second": (1, PUBLISHED), "later": (1, PUBLISHED + 5)})
    assert parse_snapshot(text) == {}


def test_a_shell_snapshot_counts_by_size_and_whole_seconds() -> None:
    shell = (
        "#2023-11-14 22:13:20.500000000 +0000\n"
        "1234|7|2023-11-14 22:13:19.250000000 +0000|2023-11-14 22:13:19.250000000 +0000|./x/y\n"
        "1235|7|2023-11-14 23:13:20.000000000 +0100|2023-11-14 22:13:20.000000000 +0000|./racy\n"
        "not|a|line\n"
    )
    assert parse_snapshot(shell) == {"x/y": (7, PUBLISHED - 1)}
    assert parse_snapshot("") == {} and parse_snapshot("1|2|3|4|5\n") == {}


def test_shared_entries_cover_themselves_and_what_lies_under_them() -> None:
    shared = Shared(("storage/", ".env"))
    assert (
        shared.covers("storage") and shared.covers("storage/logs/a.log") and shared.covers(".env")
    )
    assert not shared.covers("storage2/x") and not shared.covers(".env.example")


def test_parents_come_before_their_children_once_each() -> None:
    assert parents(["a/b/c.txt", "a/d.txt", "e.txt", "a/b/f/g"]) == ["a", "a/b", "a/b/f"]


@pytest.mark.parametrize(
    ("hooks", "named"),
    [
        (HookSettings(before=("./migrate",)), "--before"),
        (HookSettings(after=("reload",), healthcheck="curl -f x"), "--after, --healthcheck"),
    ],
)
def test_hooks_over_sftp_are_a_usage_error_naming_sftp(hooks: HookSettings, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        refuse_hooks(PushSettings(path="/srv/app", hooks=hooks), "box allows SFTP only")
    assert caught.value.exit_code == ExitCode.USAGE
    assert f"box allows SFTP only: no commands run over SFTP, so {named} cannot run there" in str(
        caught.value
    )
    refuse_hooks(PushSettings(path="/srv/app"), "box")  # no hooks: nothing to refuse


def test_group_and_writable_over_sftp_are_a_usage_error_too() -> None:
    settings = PushSettings(path="/srv/app", permissions=Permissions(group="www-data"))
    with pytest.raises(
        ConfigError, match="box allows SFTP only: --group and --writable set groups"
    ):
        refuse_hooks(settings, "box allows SFTP only")


def test_auto_falls_back_to_sftp_only_when_the_target_runs_no_commands() -> None:
    def no_shell() -> str:
        raise NoShellError("box runs no commands")

    assert by_transport("auto", no_shell, lambda: "sftp") == "sftp"
    assert by_transport("auto", lambda: "shell", lambda: "sftp") == "shell"
    assert by_transport("sftp", no_shell, lambda: "sftp") == "sftp"
    with pytest.raises(NoShellError):
        by_transport("shell", no_shell, lambda: "sftp")
