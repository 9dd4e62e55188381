"""DIR/.deployer/history: one JSON line per deploy, rollback or failure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from deployer.remote.shell import q

HistoryAction = Literal["deploy", "rollback", "failed"]


@dataclass(frozen=True)
class HistoryEntry:
    """One line of DIR/.deployer/history."""

    action: HistoryAction
    release: str
    previous: str
    time: str
    by: str
    commit: str = ""
    ref: str = ""
    pipeline: str = ""
    detail: str = ""

    def to_json(self) -> str:
        """Compact JSON for the history file."""
        data = {k: v for k, v in self.__dict__.items() if v}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


def append_history_script(path: str, entry: HistoryEntry) -> str:
    """Append one JSON line to the history."""
    return f"printf '%s\\n' {q(entry.to_json())} >> {q(path)}/.deployer/history\n"


def read_history_script(path: str, limit: int) -> str:
    """Print the newest history lines."""
    return f"tail -n {int(limit)} -- {q(path)}/.deployer/history 2>/dev/null || true\n"


def parse_history(text: str) -> list[dict[str, str]]:
    """Parse history lines, skipping any that are not JSON objects."""
    entries = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            entries.append({str(k): str(v) for k, v in value.items()})
    return entries
