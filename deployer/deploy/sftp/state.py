"""What the shell probe reports, read over SFTP: the path, current, releases, the lock, the live
manifest and free space, as the same ``remote.state.TargetState``."""

from __future__ import annotations

from collections.abc import Callable

from deployer.errors import RemoteError
from deployer.output import human_size
from deployer.remote.files import POSIX_RENAME, FileSession, FileStat
from deployer.remote.layout import RELEASE_ID, manifest_path
from deployer.remote.state import TargetState, lock_error

MANIFEST_LIMIT = 256 << 20  # a manifest line is ~100 bytes: millions of files


def require_posix_rename(files: FileSession) -> None:
    """Refuse a server that cannot rename a symlink over current atomically."""
    if not files.offers(POSIX_RENAME):
        raise RemoteError(
            f"{files.label} does not offer {POSIX_RENAME} on SFTP: without it `current` cannot be"
            " switched atomically, so deployer will not deploy there — use an OpenSSH sftp-server"
            " (4.8 or newer, without -P posix-rename) or give the account a shell"
        )


def survey(files: FileSession, path: str) -> TargetState:
    """Read the target's state under path (nothing is changed)."""
    found: dict[str, FileStat | None] = {}
    names: list[tuple[str, FileStat]] = []
    batch = files.batch()
    for what in ("", "/current", "/.deployer/lock"):
        batch.lstat(path + what, keep(found, what))
    batch.listdir(f"{path}/releases", names.extend)
    batch.wait()
    top = found[""]
    if top is not None and top.kind == "symlink":
        top = files.lstat(files.realpath(path))
    link = found["/current"]
    current = ""
    if link is not None and link.kind == "symlink":
        current = (files.readlink(f"{path}/current") or "").rstrip("/").rsplit("/", 1)[-1]
    lock = ""
    if found["/.deployer/lock"] is not None:
        info = files.read(f"{path}/.deployer/lock/info", 4096) or b""
        lock = info.decode(errors="replace").partition("\n")[0] or "no details"
    manifest: tuple[str, ...] = ()
    if current and RELEASE_ID.match(current):
        text = files.read(manifest_path(path, current), MANIFEST_LIMIT) or b""
        manifest = tuple(text.decode(errors="replace").splitlines())
    releases = sorted(n for n, s in names if s.kind == "dir" and RELEASE_ID.match(n))
    return TargetState(
        path=files.realpath(path) if top is not None else path,
        exists=top is not None,
        is_dir=top is None or top.kind == "dir",
        writable=True,  # SFTP cannot ask: taking the lock (a mkdir) is the test
        free_bytes=_free(files, path) or 0,
        current=current,
        current_is_symlink=link is None or link.kind == "symlink",
        releases=tuple(releases),
        lock=lock,
        manifest=manifest,
    )


def keep(into: dict[str, FileStat | None], key: str) -> Callable[[FileStat | None], None]:
    """An lstat handler that stores the answer under key."""

    def handle(stat: FileStat | None) -> None:
        into[key] = stat

    return handle


def _free(files: FileSession, path: str) -> int | None:
    """Free bytes at path or, before the first deploy, at its nearest existing parent."""
    probe = path
    while probe not in ("", "/", ".") and files.lstat(probe) is None:
        probe = (probe.rsplit("/", 1)[0] or "/") if "/" in probe else "."
    return files.free_bytes(probe or ".")


def check_sftp_ready(state: TargetState, label: str, needed_bytes: int) -> None:
    """Raise the one-line error for the first thing that would make the deploy fail."""
    if not state.is_dir:
        raise RemoteError(
            f"{state.path} on {label} exists but is not a directory — choose another --path"
        )
    if not state.current_is_symlink:
        raise RemoteError(
            f"{state.path}/current on {label} is not a symlink — move it aside so deployer can manage releases"
        )
    if state.free_bytes and needed_bytes and state.free_bytes < needed_bytes * 1.1 + (1 << 20):
        raise RemoteError(
            f"not enough space on {label}: {human_size(state.free_bytes)} free in {state.path},"
            f" the release needs {human_size(needed_bytes)} — free some space or lower --keep"
        )
    if state.lock:
        raise lock_error(state.lock, state.path, label)
