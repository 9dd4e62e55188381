"""What an artifact is once checked: its entries, where they come from, and where a stream goes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

if TYPE_CHECKING:
    pass


EntryKind = Literal["file", "dir", "symlink"]


ArtifactKind = Literal["dir", "tar", "zip"]


TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


SUPPORTED = "a directory or a .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz or .zip file"


CHUNK = 1 << 20


# What a deployed file keeps of its mode: the permission bits. Setuid, setgid and sticky never
# reach a target (as root, tar would restore them on files it also makes root's).
PERMISSION_BITS = 0o777

# ... and of those, never write permission for the group or others (as CPython's tarfile `data`
# filter): a release is its owner's to change; --group and --writable grant the rest explicitly.
# Dropped without a word: builds made with umask 0000 (GitLab's runners) have it on every file.
DEPLOYED_BITS = PERMISSION_BITS & ~0o022


@dataclass(frozen=True)
class Entry:
    """One member of the release tree."""

    path: str
    kind: EntryKind
    mode: int
    size: int
    mtime: float
    linkname: str = ""


class Origin(NamedTuple):
    """Where an entry sits in a tar or zip artifact (indexes in the archive's own order)."""

    position: int  # the member that produced the entry
    name: str  # its name as stored, to notice an archive replaced since it was checked
    content: int  # the member holding the bytes: differs from position for tar hard links
    content_name: str


@dataclass(frozen=True)
class Artifact:
    """A validated artifact: its kind and the entries of the tree it produces."""

    source: Path
    kind: ArtifactKind
    entries: tuple[Entry, ...]
    origins: Mapping[str, Origin] = field(default_factory=dict, repr=False, compare=False)
    cleared: tuple[str, ...] = ()  # entries whose setuid, setgid or sticky bit was dropped
    # the topmost paths .deployignore and --exclude left out ('dir/' for a directory)
    excluded: tuple[str, ...] = ()

    @property
    def total_size(self) -> int:
        """Sum of the file sizes (uncompressed)."""
        return sum(e.size for e in self.entries if e.kind == "file")

    @property
    def file_count(self) -> int:
        """Number of regular files."""
        return sum(1 for e in self.entries if e.kind == "file")

    def cleared_note(self) -> str:
        """The log line naming the entries whose special mode bits were dropped ('' if none)."""
        if not self.cleared:
            return ""
        shown = ", ".join(self.cleared[:10]) + (", ..." if len(self.cleared) > 10 else "")
        return (
            f"dropped the setuid/setgid/sticky bits of {len(self.cleared)} entr"
            f"{'y' if len(self.cleared) == 1 else 'ies'} (deployed with permission bits only): {shown}"
        )


class Sink(Protocol):
    """Where a tar stream goes: anything with write (an SSH channel, a pipe, a file)."""

    def write(self, data: bytes, /) -> int:
        """Write all of data."""
        ...
