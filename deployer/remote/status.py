"""The exit statuses of the scripts deployer runs on a target, in one place.

A script says what went wrong by its exit status (and one line on stderr); the deploy service
reads the status back through ``RemoteStatus``. Statuses not listed are a command's own (tar,
cp, a hook): they are reported as they are.
"""

from __future__ import annotations

from enum import IntEnum


class RemoteStatus(IntEnum):
    """What a release script's exit status means."""

    OK = 0
    MISSING = 4  # a release to switch to, or a shared file to link, does not exist
    VERIFY_FAILED = 5  # files do not match the manifest; their paths are on stdout
    LIVE_RELEASE = 6  # asked to remove the release current points at: it was left alone
    LOCK_HELD = 75  # EX_TEMPFAIL: another deploy holds the lock; `lock=<info>` is on stdout
    NO_RELEASE_DIR = 97  # a hook could not cd into the release directory
    FINISH_FAILED = 98  # switched, but recording, pruning or unlocking failed
    TIMED_OUT = 124  # the target's timeout stopped a hook (GNU's status; BusyBox's is mapped to it)
