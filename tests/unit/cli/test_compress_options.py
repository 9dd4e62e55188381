"""push's --compress and --compress-level: each codec's own range, checked before anything connects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def push(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """deployer push of a small app to an address nothing listens on (nothing may get that far)."""
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    (app / "index.html").write_text("hi\n")
    argv = [sys.executable, "-m", "deployer", "push", str(app), "--to", "deploy@127.0.0.1:1",
            "--path", "/srv/app", "--connect-timeout", "1", *args]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--compress", "none", "--compress-level", "3"),
         "--compress-level 3 with --compress none: plain tar has no level — drop one of them"),
        (("--compress", "gzip", "--compress-level", "12"),
         "--compress-level 12: gzip levels are 1-9 — choose one in that range"),
        (("--compress", "zstd", "--compress-level", "22"),
         "--compress-level 22: zstd levels are 1-19 — choose one in that range"),
        (("--compress-level", "0"), "--compress-level 0: to send plain tar, use --compress none instead"),
    ],
)  # fmt: skip
def test_a_level_outside_the_codecs_range_exits_2_in_one_line(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = push(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"deployer: error: {message}\n"


def test_the_environment_sets_the_codec_too(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "a").write_text("a")
    result = subprocess.run(
        [sys.executable, "-m", "deployer", "push", str(app), "--to", "deploy@127.0.0.1:1",
         "--path", "/srv/app", "--compress-level", "5"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "DEPLOYER_COMPRESS": "none"},
    )  # fmt: skip
    assert result.returncode == 2 and "with --compress none" in result.stderr


@pytest.mark.parametrize(
    ("args", "asked"),
    [
        (("--compress", "zstd"), "--compress zstd"),
        (("--compress", "gzip"), "--compress gzip"),
        (("--compress-level", "5"), "--compress-level 5"),
    ],
)
def test_a_codec_asked_of_an_sftp_push_exits_2_in_one_line(
    tmp_path: Path, args: tuple[str, ...], asked: str
) -> None:
    result = push(tmp_path, "--transport", "sftp", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"deployer: error: {asked} with --transport sftp: SFTP writes the files one by one, with no"
        " stream to compress — drop it, or deploy to an account with a shell (--transport shell)\n"
    )


def test_an_sftp_push_takes_the_default_and_none_without_complaint(tmp_path: Path) -> None:
    for args in ((), ("--compress", "none"), ("--compress", "auto")):
        result = push(tmp_path, "--transport", "sftp", *args)
        assert result.returncode != 2, (
            result.stderr
        )  # it got as far as connecting (nothing listens)
        assert "--transport sftp" not in result.stderr, result.stderr
