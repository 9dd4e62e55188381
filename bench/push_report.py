"""The push benchmark's report: one Markdown table per link profile, the fixed cost, the goals.

Per profile: the link check, the full-deploy table (every method on every corpus, the best plain
method, deployer's ratio to it and to the methods it must beat by a margin, the codec and zstd
levels it used, its peak RSS), the redeploy tables (mtimes kept, and a fresh build, each against
rsync -az), the zstd adaptation table (fixed levels next to the adaptive default), the
parallel-targets table and the 1 GiB peak-memory table. Then the fixed cost per deploy (least
squares over the profiles' RTTs) and every goal of issue 18 with PASS/FAIL.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from bench.corpora import Corpus
from bench.push_config import (
    ADAPT_LEVELS,
    DEPLOYER,
    DEPLOYER_LINKED,
    EXTRA_METHODS,
    MARGIN,
    MARGIN_METHODS,
    METHODS,
    PLAIN,
    REBUILD,
    REDEPLOY,
    RSYNC,
    SCP,
    TAR,
    TARZSTD,
    fixed_zstd,
)
from bench.push_methods import Result


def fmt_s(seconds: float | None) -> str:
    """Seconds as a table shows them: 2 decimals, 1 from 100 s on, "-" when unknown."""
    if seconds is None:
        return "-"
    return f"{seconds:.1f}" if seconds >= 100 else f"{seconds:.2f}"


def cell(result: Result | None, corpus: Corpus | None = None, mbps: bool = False) -> str:
    """A table cell: the seconds ("~" when extrapolated, MB/s with mbps), or n/a/skipped/FAILED."""
    if result is None:
        return "-"
    if not result.ok:
        return (
            "n/a"
            if result.error.startswith("n/a")
            else ("skipped" if result.error.startswith("skipped") else "FAILED")
        )
    text = ("~" if result.note.startswith("est.") else "") + fmt_s(result.seconds)
    if mbps and corpus is not None and result.seconds:
        text += f" ({corpus.bytes / 1e6 / result.seconds:.1f} MB/s"
        upload = result.extra.get("upload_seconds")
        if upload:
            text += f"; upload phase {corpus.bytes / 1e6 / statistics.median(upload):.1f}"
        text += ")"
    return text


def table(rows: list[list[str]]) -> str:
    """A Markdown table of rows (the first is the header), columns padded to line up."""
    rows = [
        [c.replace("|", "\\|") for c in row] for row in rows
    ]  # Markdown: "tar | ssh" is one cell
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(row)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def find(results: list[Result], **kw: Any) -> Result | None:
    """The first result whose fields equal kw (profile=..., method=...), or None."""
    for r in results:
        if all(getattr(r, k) == v for k, v in kw.items()):
            return r
    return None


def best_plain(results: list[Result], profile: str, corpus: str) -> Result | None:
    """The fastest successful plain method (tar, tar+gzip, tar+zstd, rsync) of a full deploy."""
    candidates = [
        r
        for m in PLAIN
        if (r := find(results, profile=profile, corpus=corpus, method=m, scenario="full")) and r.ok
    ]
    return min(candidates, key=lambda r: r.seconds or 0) if candidates else None


def latency_model(
    results: list[Result], profiles: list[dict[str, Any]]
) -> dict[str, tuple[float, float]]:
    """Fit seconds = a + b * RTT for the 1 kB deploys: a = local work, b = round trips spent."""
    model = {}
    rtts = {p["key"]: p["rtt_ms"] / 1000 for p in profiles}
    for method in (DEPLOYER, *EXTRA_METHODS, TAR):
        points = [
            (rtts[r.profile], min(r.samples))
            for r in results
            if r.corpus == "tiny" and r.method == method and r.ok and r.profile in rtts
        ]
        if len({x for x, _ in points}) < 2:
            continue
        mx = statistics.fmean(x for x, _ in points)
        my = statistics.fmean(y for _, y in points)
        b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
        model[method] = (my - b * mx, b)
    return model


def report(
    state: dict[str, Any],
    results: list[Result],
    corpus_map: dict[str, Corpus],
    args: argparse.Namespace,
) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown report of every profile, and the goals with their verdicts (for the JSON)."""
    out: list[str] = []
    goals: list[dict[str, Any]] = []

    def goal(
        name: str, profile: str, measured: str, ok: bool | None, ratio: float | None = None
    ) -> None:
        goals.append(
            {
                "goal": name,
                "profile": profile,
                "measured": measured,
                "verdict": "n/a" if ok is None else ("PASS" if ok else "FAIL"),
                "ratio": ratio,
            }
        )

    full_corpora = [c for c in args.corpora if c in corpus_map and c not in ("huge", "tiny")]
    for prof in state["profiles"]:
        key: str = prof["key"]
        link = prof.get("link", {})
        out.append(f"### {prof['label']}  (`{key}`)\n")
        if "error" in link:
            out.append(f"link check failed: {link['error']}\n")
        elif link:
            nominal = prof["rate_mbit"]
            out.append(
                f"Link check (same run): RTT {link['rtt_ms_median']:.1f} ms median of {link['pings']} pings "
                f"(nominal {prof['rtt_ms']:g}); bulk {link['mbit_per_s']:.0f} Mbit/s = "
                f"{100 * link['mbit_per_s'] / nominal:.0f} % of nominal over {link['bytes'] / 1e6:.0f} MB "
                f"({'intact' if link['intact'] else 'CORRUPTED'}); `ssh target true` through the jump: "
                f"{prof.get('ssh_setup', 0):.2f} s.\n"
            )
        mine_t = find(results, profile=key, corpus="tiny", method=DEPLOYER)
        tar_t = find(results, profile=key, corpus="tiny", method=TAR)
        if mine_t and tar_t and mine_t.ok and tar_t.ok:
            out.append(
                f"Fixed cost (a 1 kB artifact, fastest of {len(mine_t.samples)}): deployer push "
                f"{min(mine_t.samples):.2f} s, tar | ssh {min(tar_t.samples):.2f} s.\n"
            )
        header = ["method"] + [corpus_map[c].label for c in full_corpora]
        rows = [header]
        measured = {r.method for r in results}
        for method in (*METHODS, *(m for m in EXTRA_METHODS if m in measured)):
            row = [method + (" (est.)" if method == SCP else "")]
            for c in full_corpora:
                r = find(results, profile=key, corpus=c, method=method, scenario="full")
                row.append(cell(r, corpus_map[c], mbps=corpus_map[c].files == 1))
            rows.append(row)
        best_row, ratio_row, margin_row, codec_row, rss_row = (
            ["best plain (tar/tar+gzip/tar+zstd/rsync)"],
            ["deployer / best plain"],
            [f"deployer / {' and '.join(MARGIN_METHODS)}"],
            ["deployer codec [zstd levels], SSH client"],
            ["deployer peak RSS"],
        )
        for c in full_corpora:
            best = best_plain(results, key, c)
            mine = find(results, profile=key, corpus=c, method=DEPLOYER, scenario="full")
            best_row.append(f"{fmt_s(best.seconds)} {best.method}" if best else "-")
            if best and mine and mine.ok and mine.seconds and best.seconds:
                ratio = mine.seconds / best.seconds
                ratio_row.append(f"{ratio:.2f}x")
                goal(
                    f"full deploy <= best plain ({c})",
                    key,
                    f"{mine.seconds:.2f} s vs {best.seconds:.2f} s ({best.method})",
                    ratio <= 1.0,
                    round(ratio, 3),
                )
            else:
                ratio_row.append("-")
                goal(
                    f"full deploy <= best plain ({c})",
                    key,
                    "deployer failed" if mine and not mine.ok else "not measured",
                    False if mine and not mine.ok else None,
                )
            margin_row.append(_margin(goal, results, key, c, mine))
            codec_row.append(_codec(mine))
            rss_row.append(f"{mine.maxrss_kb / 1024:.0f} MB" if mine and mine.maxrss_kb else "-")
        rows += [best_row, ratio_row, margin_row, codec_row, rss_row]
        out.append(table(rows) + "\n")
        scp_any = [r for r in results if r.profile == key and r.method == SCP and r.note]
        if scp_any:
            out.append(
                "scp -r: "
                + "; ".join(
                    f"{r.corpus} {r.note} (measured {r.extra['measured_seconds']:.2f} s, "
                    f"extrapolated linearly in the file count after the ssh set-up)"
                    for r in scp_any
                )
                + ".\n"
            )
        for c in full_corpora:
            mine = find(results, profile=key, corpus=c, method=DEPLOYER, scenario="full")
            if corpus_map[c].files == 1:
                if mine and mine.ok and mine.seconds:
                    rate = corpus_map[c].bytes / mine.seconds
                    share = rate / prof["rate_bytes"]
                    measured_link = link.get("mbit_per_s")
                    extra = (
                        f"; {100 * rate * 8 / 1e6 / measured_link:.0f} % of the measured link"
                        if measured_link
                        else ""
                    )
                    goal(
                        f"one large file >= 90 % of link rate ({c})",
                        key,
                        f"{rate / 1e6:.1f} MB/s = {100 * share:.0f} % of {prof['rate_bytes'] / 1e6:.1f} MB/s{extra}",
                        share >= 0.9,
                        round(share, 3),
                    )
                else:
                    goal(
                        f"one large file >= 90 % of link rate ({c})",
                        key,
                        "deployer failed" if mine else "not measured",
                        False if mine else None,
                    )
        for scenario, title in (
            (REDEPLOY, "redeploy, 1 % changed, mtimes kept"),
            (REBUILD, "redeploy, 1 % changed, fresh build (every mtime new)"),
        ):
            red = [r for r in results if r.profile == key and r.scenario == scenario]
            if red:
                out.append(_redeploy_table(goal, red, corpus_map, key, scenario, title) + "\n")
        adapt = [r for r in results if r.profile == key and r.scenario == "adapt"]
        if adapt:
            out.append(_adapt_table(adapt, corpus_map["src"], prof["rate_bytes"]) + "\n")
        # parallel
        par = [r for r in results if r.profile == key and r.scenario == "parallel"]
        if par:
            counts = sorted({r.targets for r in par})
            corpus = corpus_map[par[0].corpus]
            rows = [[f"targets in parallel ({corpus.label})"] + [str(n) for n in counts]]
            shown = (DEPLOYER, *(m for m in EXTRA_METHODS if find(par, method=m)), TARZSTD)
            for method in shown:
                label = (
                    method if method != TARZSTD else "tar | zstd -3 -T0 once, N x ssh in parallel"
                )
                rows.append([label] + [cell(find(par, method=method, targets=n)) for n in counts])
            fan_row = ["deployer / plain fan-out"]
            for n in counts:
                mine, plain = (
                    find(par, method=DEPLOYER, targets=n),
                    find(par, method=TARZSTD, targets=n),
                )
                fan_row.append(
                    f"{mine.seconds / plain.seconds:.2f}x"
                    if mine and plain and mine.ok and plain.ok and mine.seconds and plain.seconds
                    else "-"
                )
            rows.append(fan_row)
            ratio_row = ["deployer: time / time for 1 target"]
            one = find(par, method=DEPLOYER, targets=1)
            for n in counts:
                r = find(par, method=DEPLOYER, targets=n)
                ratio_row.append(
                    f"{r.seconds / one.seconds:.2f}x"
                    if r and one and r.ok and one.ok and r.seconds and one.seconds
                    else "-"
                )
            rows.append(ratio_row)
            plain_one = find(par, method=TARZSTD, targets=1)
            plain_row = ["plain fan-out: time / time for 1 target"]
            for n in counts:
                r = find(par, method=TARZSTD, targets=n)
                plain_row.append(
                    f"{r.seconds / plain_one.seconds:.2f}x"
                    if r and plain_one and r.ok and plain_one.ok and r.seconds and plain_one.seconds
                    else "-"
                )
            rows.append(plain_row)
            wire = (one.extra.get("wire_bytes") if one else None) or None
            if wire:
                rows.append(
                    ["link floor: N x wire bytes / rate"]
                    + [f"{n * wire / prof['rate_bytes']:.2f}" for n in counts]
                )
            rss = ["deployer peak RSS"] + [
                f"{r.maxrss_kb / 1024:.0f} MB"
                if (r := find(par, method=DEPLOYER, targets=n)) and r.maxrss_kb
                else "-"
                for n in counts
            ]
            rows.append(rss)
            out.append(table(rows) + "\n")
            top = max(counts)
            r = find(par, method=DEPLOYER, targets=top)
            fan = find(par, method=TARZSTD, targets=top)
            what = f"{top} targets <= the plain fan-out"
            if top > 1 and r and fan and r.ok and fan.ok and r.seconds and fan.seconds:
                ratio = r.seconds / fan.seconds
                floor = (
                    f"; the link alone needs {top * wire / prof['rate_bytes']:.1f} s for {top} copies"
                    if wire
                    else ""
                )
                goal(
                    what,
                    key,
                    f"{r.seconds:.2f} s vs {fan.seconds:.2f} s{floor}",
                    ratio <= 1.0,
                    round(ratio, 3),
                )
            elif top > 1:
                failed = r if r and not r.ok else fan if fan and not fan.ok else None
                goal(
                    what,
                    key,
                    failed.error if failed else "not measured",
                    None if (failed is None or failed.error.startswith("n/a")) else False,
                )
        mem = [r for r in results if r.profile == key and r.scenario == "memory"]
        if mem:
            corpus = corpus_map["huge"]
            rows = [["1 GiB artifact (" + corpus.label + ")", "seconds", "MB/s", "peak RSS"]]
            for r in mem:
                rows.append(
                    [
                        r.method,
                        cell(r),
                        f"{corpus.bytes / 1e6 / r.seconds:.1f}" if r.ok and r.seconds else "-",
                        f"{r.maxrss_kb / 1024:.0f} MB" if r.maxrss_kb else "-",
                    ]
                )
            out.append(table(rows) + "\n")
    model = latency_model(results, state["profiles"])
    if model:
        out.append(
            "### Fixed cost per deploy (1 kB artifact, least squares over the profiles' RTTs)\n"
        )
        rows = [["method", "seconds = local + round trips x RTT", "local (s)", "round trips"]]
        rows += [
            [m, f"{a:.2f} + {b:.0f} x RTT", f"{a:.2f}", f"{b:.0f}"] for m, (a, b) in model.items()
        ]
        out.append(table(rows) + "\n")
    # memory goal over everything measured
    huge = [r for r in results if r.scenario == "memory" and r.method == DEPLOYER]
    if huge and huge[0].maxrss_kb:
        mb = huge[0].maxrss_kb / 1024
        goal(
            "peak memory < 100 MB for a 1 GiB artifact",
            huge[0].profile,
            f"{mb:.0f} MB max RSS" + ("" if huge[0].ok else " (run failed)"),
            mb < 100 and huge[0].ok,
            round(mb / 100, 3),
        )
    else:
        biggest = max(
            (r for r in results if r.method == DEPLOYER and r.maxrss_kb),
            key=lambda r: corpus_map[r.corpus].bytes,
            default=None,
        )
        seen = (
            "not measured (needs the full run); largest seen: "
            f"{biggest.maxrss_kb / 1024:.0f} MB for {corpus_map[biggest.corpus].label}"
            if biggest and biggest.maxrss_kb  # (never 0 here; tells the type checker it is set)
            else "not measured"
        )
        goal("peak memory < 100 MB for a 1 GiB artifact", "-", seen, None)
    rows = [["goal", "profile", "measured", "verdict"]]
    rows += [[g["goal"], g["profile"], g["measured"], g["verdict"]] for g in goals]
    out.append("### Goals\n")
    out.append(table(rows) + "\n")
    return "\n".join(out), goals


def _margin(
    goal: Any, results: list[Result], profile: str, corpus: str, mine: Result | None
) -> str:
    """deployer's ratio to each method it must beat by MARGIN (a cell, and one goal)."""
    ratios = []
    for method in MARGIN_METHODS:
        theirs = find(results, profile=profile, corpus=corpus, method=method, scenario="full")
        if mine and mine.ok and mine.seconds and theirs and theirs.ok and theirs.seconds:
            ratios.append((method, mine.seconds / theirs.seconds, theirs.seconds))
    name = f"full deploy <= {MARGIN:g}x {' and '.join(MARGIN_METHODS)} ({corpus})"
    if len(ratios) < len(MARGIN_METHODS):
        goal(name, profile, "not measured", False if mine and not mine.ok else None)
        return "-"
    worst = max(ratio for _, ratio, _ in ratios)
    measured = ", ".join(f"{ratio:.2f}x {m} ({s:.2f} s)" for m, ratio, s in ratios)
    goal(name, profile, measured, worst <= MARGIN, round(worst, 3))
    return " / ".join(f"{ratio:.2f}x" for _, ratio, _ in ratios)


def _codec(result: Result | None) -> str:
    """How deployer encoded the stream (the zstd levels it went through) and its SSH client."""
    if not result or not result.extra.get("compression"):
        return "-"
    levels = result.extra.get("levels") or []
    client = result.extra.get("ssh_client")
    return (
        str(result.extra["compression"])
        + (f" [{'→'.join(map(str, levels))}]" if len(levels) > 1 else "")
        + (f", {client}" if client else "")
    )


def _redeploy_table(
    goal: Any,
    red: list[Result],
    corpus_map: dict[str, Corpus],
    profile: str,
    scenario: str,
    title: str,
) -> str:
    """One redeploy scenario: deployer (and --link-unchanged) against rsync -az, and the goals."""
    cs = list(dict.fromkeys(r.corpus for r in red))
    rows = [[title] + [corpus_map[c].label for c in cs]]
    for method in (DEPLOYER, DEPLOYER_LINKED, RSYNC):
        if any(r.method == method for r in red):
            rows.append([method] + [cell(find(red, corpus=c, method=method)) for c in cs])
    ratio_row = ["deployer / rsync -az"]
    for c in cs:
        mine, theirs = find(red, corpus=c, method=DEPLOYER), find(red, corpus=c, method=RSYNC)
        name = f"redeploy, {title.split(',', 1)[1].strip()} <= rsync -az ({c})"
        if mine and theirs and mine.ok and theirs.ok and theirs.seconds and mine.seconds:
            ratio = mine.seconds / theirs.seconds
            ratio_row.append(f"{ratio:.2f}x")
            measured = f"{mine.seconds:.2f} s vs {theirs.seconds:.2f} s"
            goal(name, profile, measured, ratio <= 1.0, round(ratio, 3))
        else:
            ratio_row.append("-")
            goal(name, profile, "a run failed", False if mine and not mine.ok else None)
    rows.append(ratio_row)
    return table(rows)


def _adapt_table(adapt: list[Result], corpus: Corpus, rate_bytes: float) -> str:
    """zstd at fixed levels next to the adaptive default: time, wire bytes, how long the wire
    waited for the compressor (after the connection's buffers first filled), the levels used."""
    rows = [
        [
            f"zstd levels ({corpus.label})",
            "seconds",
            "on the wire",
            "wire time",
            "wire waited",
            "levels used",
        ]
    ]
    for method in (DEPLOYER, *(fixed_zstd(n) for n in ADAPT_LEVELS)):
        r = find(adapt, method=method)
        if r is None:
            continue
        wire = r.extra.get("wire_bytes")
        levels = r.extra.get("levels") or []
        label = "adaptive (default)" if method == DEPLOYER else method.rsplit(" ", 1)[1]
        rows.append(
            [
                label,
                cell(r),
                f"{wire / 1e6:.1f} MB" if wire else "-",
                f"{wire / rate_bytes:.2f} s" if wire else "-",
                f"{r.extra['wire_waited']:.2f} s" if "wire_waited" in r.extra else "-",
                "→".join(map(str, levels)) or "-",
            ]
        )
    return table(rows)
