"""Many targets at once: stage everywhere, then switch all-or-nothing (in rolling batches if asked).

Phase 1 stages every target in parallel (upload + before hooks); if any fails, nothing is
switched anywhere. Phase 2 switches batch by batch; if a target fails its after hook or
healthcheck, every target already switched is switched back and the rest are never switched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from deployer.deploy.outcome import Outcome, Status
from deployer.deploy.transport import PhasedDeploy
from deployer.errors import ConfigError, DeployerError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class FleetSettings:
    """How many targets work at once, and how many switch per batch (None: all together)."""

    parallel: int = 10
    batch: int | None = None


def parse_batch(value: str | None, total: int) -> int | None:
    """'25%' or '3' -> targets per batch (at least 1); None -> all at once."""
    if value is None or value == "":
        return None
    match = re.fullmatch(r"(\d+)(%?)", value.strip())
    if not match or int(match[1]) == 0 or (match[2] and int(match[1]) > 100):
        raise ConfigError(f"--batch {value!r} must be a count like 2 or a share like 25%")
    count = int(match[1])
    return max(1, math.ceil(total * count / 100)) if match[2] else count


def parse_shard(value: str | None, env: Mapping[str, str]) -> tuple[int, int] | None:
    """'K/N' (1-based) or 'auto' (GitLab's CI_NODE_INDEX/CI_NODE_TOTAL from parallel:) -> (K, N)."""
    if value is None or value == "":
        return None
    if value == "auto":
        index, total = env.get("CI_NODE_INDEX", "1"), env.get("CI_NODE_TOTAL", "1")
        value = f"{index}/{total}"
    match = re.fullmatch(r"(\d+)/(\d+)", value.strip())
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ConfigError(
            f"--shard {value!r} must be K/N with 1 <= K <= N (or auto in a parallel CI job)"
        )
    return int(match[1]), int(match[2])


def select_shard(items: Sequence[T], shard: tuple[int, int] | None) -> list[T]:
    """Every N-th item starting at K (so shards stay balanced and disjoint)."""
    if shard is None:
        return list(items)
    index, total = shard
    return [item for position, item in enumerate(items) if position % total == index - 1]


def _parallel(func: Callable[[T], R], items: Sequence[T], workers: int) -> list[R | DeployerError]:
    """Run func on every item with a bounded pool; DeployerErrors are returned, not raised."""

    def guarded(item: T) -> R | DeployerError:
        try:
            return func(item)
        except DeployerError as exc:
            return exc

    if len(items) <= 1 or workers <= 1:
        return [guarded(item) for item in items]
    with ThreadPoolExecutor(
        max_workers=min(workers, len(items)), thread_name_prefix="deployer"
    ) as pool:
        return list(pool.map(guarded, items))


def push_fleet(
    labels: Sequence[str],
    start: Callable[[int], PhasedDeploy],
    fleet: FleetSettings,
) -> tuple[list[Outcome], DeployerError | None]:
    """Deploy to every target all-or-nothing; start(i) connects to target i and returns its deploy.

    Returns one outcome per target and the first failure (None when every target deployed).
    """
    deploys: list[PhasedDeploy | None] = [None] * len(labels)
    failures: dict[int, DeployerError] = {}

    def stage(index: int) -> None:
        deploys[index] = start(index)
        deploys[index].stage()  # type: ignore[union-attr]

    def record(results: Sequence[object], indexes: Sequence[int]) -> None:
        for index, result in zip(indexes, results, strict=True):
            if isinstance(result, DeployerError):
                failures[index] = result

    everyone = list(range(len(labels)))
    record(_parallel(stage, everyone, fleet.parallel), everyone)
    live = [d for d in deploys if d is not None]
    switched: list[PhasedDeploy] = []
    if not failures:
        size = fleet.batch or len(live)
        last = len(live) == 1  # nothing else can fail once it switched: finish in the same trip
        for begin in range(0, len(live), size):
            batch = list(range(begin, min(begin + size, len(live))))
            record(_parallel(lambda i: live[i].activate(last=last), batch, fleet.parallel), batch)
            switched += [live[i] for i in batch if i not in failures]
            if failures:
                break
    if failures:
        reason = f"not switched because {labels[min(failures)]} failed"
        _parallel(lambda d: d.revert(reason), switched, fleet.parallel)
        staged = [d for d in live if d.outcome.status == Status.STAGED]
        _parallel(lambda d: d.abort(reason), staged, fleet.parallel)
    else:
        record(_parallel(lambda d: d.finish(), live, fleet.parallel), everyone)
    outcomes = []
    for index, label in enumerate(labels):
        deploy = deploys[index]
        outcome = deploy.outcome if deploy is not None else Outcome(label, Status.FAILED)
        if index in failures:
            outcome.status, outcome.error = Status.FAILED, str(failures[index])
            outcome.exit_code = int(failures[index].exit_code)
        outcomes.append(outcome)
    return outcomes, failures[min(failures)] if failures else None
