"""Uploads: compression choice, and resuming after a dropped connection (real sh and tar, local target)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from deployer.artifact.compression import choose_compression, compressibility
from deployer.artifact.scan import open_artifact
from deployer.deploy.payload import prepare_payload
from deployer.deploy.upload import TransferSettings, Upload
from deployer.errors import ConnectError, RemoteError
from deployer.output import Reporter
from deployer.remote.executor import OutputSink, RunResult
from deployer.remote.layout import Layout
from deployer.remote.local import LocalExecutor
from deployer.remote.lock import prepare_script
from tests.busybox import BusyBoxShell, applet_dir, require_busybox


class DropsFirstUpload:
    """A target whose connection dies once, half-way through the first tar stream."""

    def __init__(self, inner: LocalExecutor) -> None:
        self.inner = inner
        self.label = inner.label
        self.dropped = False
        self.streams: list[int] = []

    def run(
        self,
        script: str,
        *,
        upload: Callable[[BinaryIO], object] | None = None,
        on_output: OutputSink | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        if upload is None or "tar --no-same-owner -x" not in script:
            return self.inner.run(script, upload=upload, on_output=on_output, timeout=timeout)
        sent = {"n": 0}

        def counted(out: BinaryIO) -> None:
            class Cut:
                def write(self, data: bytes) -> int:
                    if not self_.dropped and sent["n"] > 3_000_000:
                        raise ConnectionResetError("connection reset by peer")
                    sent["n"] += len(data)
                    return out.write(data)

                def flush(self) -> None:
                    out.flush()

            upload(Cut())  # type: ignore[arg-type]

        self_ = self
        try:
            result = self.inner.run(script, upload=counted, on_output=on_output, timeout=timeout)
        except Exception as exc:
            self.dropped = True
            self.streams.append(sent["n"])
            raise ConnectError(f"lost the connection to {self.label}: {exc}") from None
        self.streams.append(sent["n"])
        return result


@pytest.fixture
def big_app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    for i in range(8):
        (app / f"blob-{i}.bin").write_bytes(os.urandom(1 << 20))
    return app


def test_a_dropped_upload_resumes_with_only_the_missing_files(
    tmp_path: Path, big_app: Path, monkeypatch
) -> None:
    monkeypatch.setattr("deployer.deploy.upload.RETRY_DELAYS", (0.0,))
    target = tmp_path / "srv"
    flaky = DropsFirstUpload(LocalExecutor("t"))
    assert flaky.run(prepare_script(str(target), "test token T")).status == 0
    payload = prepare_payload(open_artifact(big_app))
    layout = Layout(str(target), "20260101T000000Z")
    reconnects = []

    def reconnect() -> DropsFirstUpload:
        reconnects.append(1)
        return flaky

    upload = Upload(flaky, payload, layout, "", (), TransferSettings(retries=1), Reporter(tty=False, quiet=True),
                    reconnect=reconnect)  # fmt: skip
    report = upload.run(())
    assert reconnects == [1] and report.attempts == 2
    first, second = flaky.streams
    assert first > 3_000_000 and second < 8 * (1 << 20) - 2_000_000  # the retry did not start over
    for i in range(8):
        assert (target / "releases" / layout.release_id / f"blob-{i}.bin").read_bytes() == (
            big_app / f"blob-{i}.bin"
        ).read_bytes()


def test_without_reconnect_a_drop_is_an_error(tmp_path: Path, big_app: Path) -> None:
    target = tmp_path / "srv"
    flaky = DropsFirstUpload(LocalExecutor("t"))
    flaky.run(prepare_script(str(target), "test token T"))
    payload = prepare_payload(open_artifact(big_app))
    upload = Upload(flaky, payload, Layout(str(target), "20260101T000000Z"), "", (), TransferSettings(),
                    Reporter(tty=False, quiet=True))  # fmt: skip
    with pytest.raises(ConnectError, match="lost the connection"):
        upload.run(())


def test_compression_follows_the_content(tmp_path: Path, big_app: Path) -> None:
    random_payload = open_artifact(big_app)
    assert compressibility(random_payload) > 0.95
    assert choose_compression(compressibility(random_payload), None) is None
    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("the same line again and again\n" * 20000)
    ratio = compressibility(open_artifact(text))
    assert ratio < 0.2
    assert choose_compression(ratio, None) == 1 and choose_compression(ratio, 9) == 9
    assert choose_compression(ratio, 0) is None


def test_a_target_whose_sha256sum_cannot_check_says_so_and_not_to_push_again(
    tmp_path: Path,
) -> None:
    """The first BusyBox report: without a working `sha256sum -c`, a push failed with "exit status 5
    ... run the push again", which could never succeed. (The probe refuses such a target; this is
    what the stage step itself says when it meets one.)"""
    userland = BusyBoxShell(applet_dir(tmp_path / "bin", require_busybox(), without=["sha256sum"]))
    target = tmp_path / "srv"
    assert userland.run(prepare_script(str(target), "test token T")).status == 0
    app = tmp_path / "app"
    app.mkdir()
    (app / "index.html").write_text("hello\n")
    upload = Upload(userland, prepare_payload(open_artifact(app)), Layout(str(target), "20260101T000000Z"),
                    "", (), TransferSettings(), Reporter(tty=False, quiet=True))  # fmt: skip
    with pytest.raises(RemoteError) as failed:
        upload.run(())
    message = str(failed.value)
    assert message.startswith(
        "verifying the release on busybox failed: sha256sum -c could not check"
    ), message
    assert "sha256sum: not found" in message and message.endswith(
        "— nothing was switched; fix what the target reported, then push again"
    )
    assert not (target / "releases" / "20260101T000000Z").exists()
    assert not (target / "releases" / ".20260101T000000Z.partial").exists()
