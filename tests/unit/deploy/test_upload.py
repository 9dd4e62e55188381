"""Uploads: compression choice, and resuming after a dropped connection (real sh and tar, local target)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from deployer.artifact.compression import PLAIN, Compression, choose_compression, compressibility
from deployer.artifact.scan import open_artifact
from deployer.deploy.payload import prepare_payload
from deployer.deploy.upload import TransferSettings, Upload
from deployer.errors import ConnectError, ExitCode, RemoteError
from deployer.output import Reporter
from deployer.remote.executor import OutputSink, RunResult
from deployer.remote.layout import Layout
from deployer.remote.local import LocalExecutor
from deployer.remote.lock import prepare_script
from deployer.remote.tools import Toolset
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
    incompressible = compressibility(random_payload)
    assert choose_compression(incompressible, "auto", None, zstd_ok=True) == PLAIN
    assert choose_compression(incompressible, "auto", 5, zstd_ok=False) == PLAIN
    # asked for by name, a codec is used whatever the content
    assert choose_compression(incompressible, "zstd", None, zstd_ok=True) == Compression("zstd")
    assert choose_compression(incompressible, "gzip", None, zstd_ok=True) == Compression("gzip", 1)
    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("the same line again and again\n" * 20000)
    ratio = compressibility(open_artifact(text))
    assert ratio < 0.2
    assert choose_compression(ratio, "auto", None, zstd_ok=True) == Compression("zstd")  # adaptive
    assert choose_compression(ratio, "auto", 7, zstd_ok=True) == Compression("zstd", 7)
    assert choose_compression(ratio, "auto", None, zstd_ok=False) == Compression("gzip", 1)
    assert choose_compression(ratio, "auto", 9, zstd_ok=False) == Compression("gzip", 9)
    assert choose_compression(ratio, "none", None, zstd_ok=True) == PLAIN


def test_many_small_incompressible_files_still_compress_by_their_tar_framing(
    tmp_path: Path,
) -> None:
    """3000 files of 22 kB that do not compress: their tar headers and padding are 3.5 % of the
    stream, which zstd takes out for little CPU; gzip would cost more than it saves."""
    app = tmp_path / "small"
    app.mkdir()
    rng = random.Random(7)
    for i in range(3000):
        (app / f"f{i:04d}.bin").write_bytes(rng.randbytes(22000))
    ratio = compressibility(open_artifact(app))
    assert 0.95 < ratio < 0.98
    # zstd -1: what it saves is the framing, which higher levels do not shrink further
    assert choose_compression(ratio, "auto", None, zstd_ok=True) == Compression("zstd", 1)
    assert choose_compression(ratio, "auto", 5, zstd_ok=True) == Compression("zstd", 5)
    assert choose_compression(ratio, "auto", None, zstd_ok=False) == PLAIN
    # one large file of the same content: nothing to gain
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "blob.bin").write_bytes(rng.randbytes(3000 * 22000))
    single = compressibility(open_artifact(tmp_path / "big"))
    assert single > 0.99
    assert choose_compression(single, "auto", None, zstd_ok=True) == PLAIN


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


def source_tree(root: Path) -> Path:
    """A compressible tree: a few hundred KiB of source-like text per file."""
    root.mkdir()
    for i in range(12):
        noise = os.urandom(40_000).hex()
        lines = (
            f"    value = table[{noise[j : j + 8]!r}]  # {j}\n" for j in range(0, len(noise), 8)
        )
        (root / f"m{i}.py").write_text("".join(lines))
    return root


ZSTD_TARGET = Toolset(frozenset({"zstd -dc"}))  # a target whose probe found zstd -dc working


def test_a_target_with_zstd_gets_an_adaptive_zstd_stream(tmp_path: Path) -> None:
    app = source_tree(tmp_path / "app")
    target, executor = tmp_path / "srv", LocalExecutor("t")
    assert executor.run(prepare_script(str(target), "test token T")).status == 0
    layout = Layout(str(target), "20260101T000000Z")
    upload = Upload(executor, prepare_payload(open_artifact(app)), layout, "", (), TransferSettings(),
                    Reporter(tty=False, quiet=True), tools=ZSTD_TARGET)  # fmt: skip
    report = upload.run(())
    assert report.compression == "zstd (adaptive)" and report.levels[0] == 3
    assert report.wire_waited >= 0
    assert report.wire_bytes < 0.8 * report.bytes_sent
    for i in range(12):
        assert (target / "releases" / layout.release_id / f"m{i}.py").read_bytes() == (
            app / f"m{i}.py"
        ).read_bytes()


class CutsTheStream:
    """A target that receives the first `keep` bytes of the upload and then an end of file."""

    def __init__(self, inner: LocalExecutor, keep: int) -> None:
        self.inner, self.label, self.keep = inner, inner.label, keep

    def run(self, script: str, *, upload: Callable[[BinaryIO], object] | None = None,
            on_output: OutputSink | None = None, timeout: float | None = None) -> RunResult:  # fmt: skip
        if upload is None:
            return self.inner.run(script, on_output=on_output, timeout=timeout)
        keep = self.keep

        def cut(out: BinaryIO) -> None:
            class Sink:
                sent = 0

                def write(self, data: bytes) -> int:
                    room = max(0, keep - self.sent)
                    out.write(data[:room])
                    self.sent += len(data)
                    return len(data)

                def flush(self) -> None:
                    out.flush()

            upload(Sink())  # type: ignore[arg-type]

        return self.inner.run(script, upload=cut, on_output=on_output, timeout=timeout)


def test_a_cut_zstd_stream_publishes_nothing(tmp_path: Path) -> None:
    app = source_tree(tmp_path / "app")
    target = tmp_path / "srv"
    executor = CutsTheStream(LocalExecutor("t"), keep=200_000)
    assert executor.run(prepare_script(str(target), "test token T")).status == 0
    layout = Layout(str(target), "20260101T000000Z")
    settings = TransferSettings(compress="zstd", compresslevel=1)
    upload = Upload(executor, prepare_payload(open_artifact(app)), layout, "", (), settings,  # type: ignore[arg-type]
                    Reporter(tty=False, quiet=True), tools=ZSTD_TARGET)  # fmt: skip
    with pytest.raises(
        RemoteError, match=r"^building the release on t failed: .*nothing was switched"
    ):
        upload.run(())
    assert not (target / "releases" / layout.release_id).exists()
    assert not (target / "releases" / f".{layout.release_id}.partial").exists()


def test_zstd_asked_for_on_a_target_without_it_is_refused_by_name(tmp_path: Path) -> None:
    app = source_tree(tmp_path / "app")
    executor = LocalExecutor("deploy@box")
    upload = Upload(executor, prepare_payload(open_artifact(app)), Layout(str(tmp_path / "srv"), "20260101T000000Z"),
                    "", (), TransferSettings(compress="zstd"), Reporter(tty=False, quiet=True),
                    tools=Toolset())  # fmt: skip
    with pytest.raises(RemoteError) as refused:
        upload.run(())
    assert str(refused.value) == (
        "deploy@box lacks zstd -dc, which --compress zstd needs — install zstd there, or use"
        " --compress auto (zstd where the target has it, else gzip)"
    )
    assert refused.value.exit_code == ExitCode.REMOTE
