"""Many targets at once: stage everywhere, then switch all-or-nothing (in rolling batches if asked).

Phase 1 stages every target in parallel (upload + before hooks); if any fails, nothing is
switched anywhere. Phase 2 switches batch by batch; if a target fails in any way after its switch
(a hook, a lost route, a bug, an interrupt), every target already switched is switched back and
the rest are never switched. A target that cannot be reached to switch back is left live and
unconfirmed (UnconfirmedError); a staged release is discarded only if it never went live.
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
from deployer.errors import ConfigError, DeployerError, InternalError, UnconfirmedError

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
    """Run func on every item with a bounded pool; errors are returned, not raised.

    A bug on one target must not leave the others switched: it comes back as an InternalError
    like any other failure (an interrupt still stops the caller, which undoes what is live).
    """

    def guarded(item: T) -> R | DeployerError:
        try:
            return func(item)
        except DeployerError as exc:
            return exc
        except Exception as exc:
            return InternalError(
                f"internal error ({type(exc).__name__}: {exc}) — rerun with --traceback and report it"
            )

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

    Returns one outcome per target and the error to report: a target left live and unconfirmed
    first (its line says what to run), else the first failure (None when every target deployed).
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

    def undo(reason: str) -> None:
        """Switch back every target whose release may be live; discard every staged one."""
        started = [(i, d) for i, d in enumerate(deploys) if d is not None]
        live = [(i, d) for i, d in started if d.outcome.status.live]
        record(_parallel(lambda item: item[1].revert(reason), live, fleet.parallel),
               [i for i, _ in live])  # fmt: skip
        staged = [(i, d) for i, d in started if d.outcome.status == Status.STAGED]
        record(_parallel(lambda item: item[1].abort(reason), staged, fleet.parallel),
               [i for i, _ in staged])  # fmt: skip

    everyone = list(range(len(labels)))
    try:
        record(_parallel(stage, everyone, fleet.parallel), everyone)
        ready = [d for d in deploys if d is not None]
        indexes = [i for i in everyone if deploys[i] is not None]
        if not failures:
            size = fleet.batch or len(ready)
            last = len(ready) == 1  # nothing can fail after its switch: finish in the same trip
            for begin in range(0, len(ready), size):
                batch = indexes[begin : begin + size]
                switch = ready[begin : begin + size]
                record(_parallel(lambda d: d.activate(last=last), switch, fleet.parallel), batch)
                if failures:
                    break
        if failures:
            undo(f"not switched because {labels[min(failures)]} failed")
        else:
            record(_parallel(lambda d: d.finish(), ready, fleet.parallel), indexes)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM when CI cancels the job: nothing stays half-done
        undo("interrupted")
        left = _unconfirmed(failures)
        if left is not None:
            raise left from None
        raise
    outcomes = []
    for index, label in enumerate(labels):
        deploy = deploys[index]
        outcome = deploy.outcome if deploy is not None else Outcome(label, Status.FAILED)
        if index in failures:
            if outcome.status != Status.UNCONFIRMED:
                outcome.status = Status.FAILED
            outcome.error, outcome.exit_code = str(failures[index]), int(failures[index].exit_code)
        outcomes.append(outcome)
    error = _unconfirmed(failures) or (failures[min(failures)] if failures else None)
    return outcomes, error


def _unconfirmed(failures: dict[int, DeployerError]) -> DeployerError | None:
    """The first target left live and unconfirmed: the one failure that needs a person."""
    left = [failures[i] for i in sorted(failures) if isinstance(failures[i], UnconfirmedError)]
    if len(left) > 1:
        return UnconfirmedError(f"{left[0]} (and {len(left) - 1} more target(s): see the summary)")
    return left[0] if left else None
