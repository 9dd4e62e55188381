"""The contents of a checked artifact: random access for any order, and one pass in the fastest order."""

from __future__ import annotations

import os
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Container, Generator, Iterator
from contextlib import ExitStack, closing, contextmanager
from typing import IO, TYPE_CHECKING, BinaryIO, cast

from deployer.artifact.model import CHUNK, Artifact, Entry
from deployer.artifact.source import (
    READ_ERRORS,
    Content,
    TarSource,
    changed_error,
    extract_member,
    label_of,
    open_dir_file,
    tar_members,
    zip_member,
)
from deployer.errors import reason

if TYPE_CHECKING:
    pass


def _fetcher(artifact: Artifact, label: str, stack: ExitStack) -> Callable[[Entry], IO[bytes]]:
    """Random access to file contents, for open_contents."""
    if artifact.kind == "dir":
        return lambda entry: open_dir_file(artifact.source, label, entry)
    if artifact.kind == "zip":
        raw = stack.enter_context(open(artifact.source, "rb"))  # noqa: SIM115 - the stack closes it
        archive = stack.enter_context(zipfile.ZipFile(raw))
        infos = archive.infolist()
        return lambda entry: archive.open(
            zip_member(infos, label, entry.path, artifact.origins[entry.path])
        )
    tar = tarfile.TarFile(fileobj=stack.enter_context(TarSource(artifact.source)))
    members = tar.getmembers()

    def fetch(entry: Entry) -> IO[bytes]:
        origin = artifact.origins[entry.path]
        member = members[origin.content] if origin.content < len(members) else None
        if member is None or member.name != origin.content_name or member.size != entry.size:
            raise changed_error(label, entry.path, "the archive was replaced")
        return extract_member(tar, member, label)

    return fetch


@contextmanager
def open_contents(artifact: Artifact) -> Iterator[Callable[[Entry], BinaryIO]]:
    """Yield opener(entry) -> a readable file for a file entry, valid inside the with-block.

    Any order works; for a compressed tar, reading out of the archive's own order costs one extra
    decompression into a temporary file.
    """
    label = label_of(artifact.source)
    with ExitStack() as stack:
        try:
            fetch = _fetcher(artifact, label, stack)
        except READ_ERRORS as exc:
            raise changed_error(label, None, f"it can no longer be read: {reason(exc)}") from exc

        def opener(entry: Entry) -> BinaryIO:
            if entry.kind != "file":
                raise ValueError(f"{entry.path!r} is a {entry.kind}, not a file")
            try:
                inner = fetch(entry)
            except READ_ERRORS as exc:
                raise changed_error(label, entry.path, reason(exc)) from exc
            return cast(BinaryIO, Content(inner, label, entry))

        yield opener


@contextmanager
def read_in_order(
    artifact: Artifact, only: Container[str] | None = None
) -> Iterator[Iterator[tuple[Entry, IO[bytes] | None]]]:
    """Every entry with its content (None for directories and symlinks), in the artifact's fastest order."""
    with closing(_in_order(artifact, label_of(artifact.source), only)) as items:
        yield items


def _in_order(
    artifact: Artifact, label: str, only: Container[str] | None
) -> Generator[tuple[Entry, IO[bytes] | None], None, None]:
    """Entries to send, each with its content, in the order the artifact can be read fastest.

    Directories and zips are read in entry order. A tar is read once, front to back, in its own
    member order (random access into a compressed tar means decompressing it again and again).
    """
    wanted = [e for e in artifact.entries if e.kind != "file" or only is None or e.path in only]
    if artifact.kind == "tar":
        yield from _tar_in_order(artifact, label, wanted)
        return
    with ExitStack() as stack:
        if artifact.kind == "zip":
            try:
                raw = stack.enter_context(open(artifact.source, "rb"))
                archive = stack.enter_context(zipfile.ZipFile(raw))
            except READ_ERRORS as exc:
                raise changed_error(
                    label, None, f"it can no longer be read: {reason(exc)}"
                ) from exc
            infos = archive.infolist()
        for entry in wanted:
            if entry.kind != "file":
                yield entry, None
            elif artifact.kind == "dir":
                with open_dir_file(artifact.source, label, entry) as handle:
                    yield entry, handle
                    # a consumer that read the whole declared size must have reached the end
                    if handle.tell() >= entry.size and handle.read(1):
                        raise changed_error(label, entry.path, "it is longer now")
            else:
                origin = artifact.origins[entry.path]
                try:
                    member = archive.open(zip_member(infos, label, entry.path, origin))
                except READ_ERRORS as exc:
                    raise changed_error(label, entry.path, reason(exc)) from exc
                with member:
                    yield entry, member


def _tar_in_order(
    artifact: Artifact, label: str, wanted: list[Entry]
) -> Iterator[tuple[Entry, IO[bytes] | None]]:
    origins = artifact.origins
    at: dict[int, list[Entry]] = {}  # member index -> entries sent when the reading gets there
    needs: dict[int, Entry] = {}  # member index -> an entry that takes its bytes
    copied: set[int] = set()  # members whose bytes a hard link elsewhere needs again
    for entry in wanted:
        origin = origins.get(entry.path)
        if origin is None or entry.kind == "dir":
            continue  # write_tar sends directories right before their first member
        # a hard link is sent where it was stored; one stored before its target waits for it
        at.setdefault(max(origin.position, origin.content), []).append(entry)
        if entry.kind == "file":
            needs[origin.content] = entry
            if origin.content != origin.position:
                copied.add(origin.content)
    try:
        source = TarSource(artifact.source)
    except READ_ERRORS as exc:
        raise changed_error(label, None, f"it can no longer be read: {reason(exc)}") from exc
    with source, ExitStack() as stack:
        tar = tarfile.TarFile(fileobj=source)
        spool: IO[bytes] | None = None
        spooled: dict[int, int] = {}  # member index -> where its bytes start in the spool
        for index, member in tar_members(tar, label):
            group = at.pop(index, [])
            for entry in group:
                if (
                    origins[entry.path].position == index
                    and member.name != origins[entry.path].name
                ):
                    raise changed_error(label, entry.path, "the archive was replaced")
            taker = needs.get(index)
            if taker is not None:
                origin = origins[taker.path]
                if member.name != origin.content_name or member.size != taker.size:
                    raise changed_error(label, taker.path, "the archive was replaced")
            if taker is not None and index in copied:
                # one temporary file for all copied contents: memory and descriptors stay flat
                if spool is None:
                    spool = stack.enter_context(tempfile.TemporaryFile())
                spool.seek(0, os.SEEK_END)
                spooled[index] = spool.tell()
                content = Content(extract_member(tar, member, label), label, taker)
                while chunk := content.read(CHUNK):
                    spool.write(chunk)
            for entry in group:
                content_at = origins[entry.path].content
                if entry.kind != "file":
                    yield entry, None
                elif spool is not None and content_at in spooled:
                    spool.seek(spooled[content_at])
                    yield entry, spool
                else:
                    yield entry, extract_member(tar, member, label)
            if not at:
                break  # nothing further is needed: skip decompressing the rest
        if at:
            raise changed_error(label, None, "the archive is shorter now")
