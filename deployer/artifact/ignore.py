"""Excludes: gitignore patterns from ``.deployignore`` and ``--exclude``, applied as git applies them.

Patterns are gitignore's (``node_modules/``, ``*.map``, ``!keep.map``, ``/anchored``, ``**``),
matched by pathspec's ``GitIgnoreSpec``. On top of it, git's rule for directories: once a
directory is excluded, nothing below it is looked at, so a negation cannot bring back a file
whose parent directory is excluded (pathspec matches each path on its own and would). The
artifact's own ``.deployignore`` (a regular file at its root) is read first and the command
line's patterns after it, so a later ``--exclude '!x'`` wins; the file itself is never deployed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import TYPE_CHECKING

from deployer.errors import ArtifactError, ConfigError

if TYPE_CHECKING:
    import pathspec

IGNORE_FILE = ".deployignore"

MAX_IGNORE_FILE = 1 << 20  # bytes: a pattern file, not data


def gitignore(lines: Sequence[str]) -> pathspec.GitIgnoreSpec:
    """pathspec's matcher of lines (imported only here: most pushes have no patterns, and the
    import takes 10 ms of every push's start)."""
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(lines)


def check_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    """The --exclude patterns, each one checked (ConfigError names the first invalid one)."""
    for pattern in patterns:
        if "\n" in pattern or "\r" in pattern:
            raise ConfigError(
                f"--exclude {pattern!r} spans several lines — give one pattern per --exclude"
            )
        try:
            gitignore([pattern])
        except ValueError as exc:
            raise ConfigError(
                f"--exclude {pattern!r} is not a gitignore pattern ({exc}) — fix it"
                " (e.g. 'node_modules/', '*.map', '!keep.map', '/build')"
            ) from None
    return tuple(patterns)


def check_size(size: int, label: str) -> None:
    """Refuse a .deployignore too large to be a list of patterns."""
    if size > MAX_IGNORE_FILE:
        raise ArtifactError(
            f"artifact {label}: {IGNORE_FILE} is larger than {MAX_IGNORE_FILE >> 10} KiB"
            " — it should hold patterns only"
        )


def read_patterns(data: bytes, label: str) -> list[str]:
    """The lines of a .deployignore (UTF-8, as file names are decoded), each checked."""
    check_size(len(data), label)
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        try:
            gitignore([line])
        except ValueError as exc:
            raise ArtifactError(
                f"artifact {label}: {IGNORE_FILE} line {number} {line!r} is not a gitignore"
                f" pattern ({exc}) — fix it"
            ) from None
    return lines


def not_a_file_error(label: str, kind: str) -> ArtifactError:
    """The .deployignore at the root is a directory, a symlink or a link: refused."""
    return ArtifactError(
        f"artifact {label}: {IGNORE_FILE} is a {kind} — it must be a regular file of patterns"
    )


class Exclusion:
    """Decides, path by path, what is left out of a release, and remembers what was.

    ``skip`` must see every path whose entry exists (in any order: archives may name a file
    before its directory, or never name the directory). A directory's answer covers everything
    below it; ``excluded`` lists only the topmost paths left out, directories ending in '/'.
    """

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self._spec = gitignore(patterns) if patterns else None
        self._dirs: dict[str, bool] = {}  # directory -> excluded (itself or an ancestor)
        self._tops: list[str] = []

    @property
    def excluded(self) -> tuple[str, ...]:
        """The topmost excluded paths, sorted as the tree is ('dir/' for a directory)."""
        return tuple(sorted(self._tops, key=lambda p: p.rstrip("/").split("/")))

    def _match(self, path: str, is_dir: bool) -> bool:
        if path == IGNORE_FILE:
            return True
        if self._spec is None:
            return False
        return self._spec.match_file(f"{path}/" if is_dir else path)

    def _dir_excluded(self, path: str) -> bool:
        known = self._dirs.get(path)
        if known is not None:
            return known
        parent = posixpath.dirname(path)
        if parent and self._dir_excluded(parent):
            self._dirs[path] = True  # covered by the excluded ancestor, not listed again
            return True
        hit = self._dirs[path] = self._match(path, True)
        if hit:
            self._tops.append(f"{path}/")
        return hit

    def skip(self, path: str, is_dir: bool) -> bool:
        """Whether the entry at path (a directory when is_dir) is left out of the release."""
        if is_dir:
            return self._dir_excluded(path)
        parent = posixpath.dirname(path)
        if parent and self._dir_excluded(parent):
            return True
        if self._match(path, False):
            self._tops.append(path)
            return True
        return False
