"""The tunnel benchmark's report: the throughput table, the recovery table and the goal lines.

Each function returns lines; bench/tunnel.py prints them and writes them to the Markdown file.
"""

from __future__ import annotations

import statistics

from bench.tunnel_faults import BACK_GOAL, SIGTERM, SIGTERM_GOAL, Result, cell

THROUGHPUT_HEAD = [
    "| path | engine | MB/s (median) | vs ssh -R | CPU s/GiB | runs (MB/s) |",
    "|---|---|---|---|---|---|",
]


def throughput_lines(
    label: str, size: int, rows: list[tuple[str, list[float], list[float]]]
) -> tuple[list[str], list[str], list[dict[str, object]]]:
    """One path's figures: the console lines, the Markdown table rows and the JSON records."""
    plain = rows[0][1]
    console = [
        f"\n  path: {label}, {size} MiB per run",
        f"  {'engine':18} {'MB/s median':>11} {'vs ssh -R':>9} {'CPU s/GiB':>9}   runs (MB/s)",
    ]
    table: list[str] = []
    measured: list[dict[str, object]] = []
    for name, values, cpu in rows:
        median = statistics.median(values)
        # each run's ratio against ssh -R measured in the same round, then the median
        ratio = statistics.median(v / p for v, p in zip(values, plain, strict=True))
        runs = ", ".join(f"{v:.0f}" for v in values)
        console.append(
            f"  {name:18} {median:11.0f} {ratio:8.2f}x {statistics.median(cpu):9.2f}   {runs}"
        )
        table.append(f"| {label} ({size} MiB) | {name} | {median:.0f} | {ratio:.2f}x |"
                     f" {statistics.median(cpu):.2f} | {runs} |")  # fmt: skip
        measured.append({"path": label, "size_mib": size, "engine": name, "mb_per_s": values,
                         "cpu_s_per_gib": cpu, "ratio_vs_ssh_r": ratio})  # fmt: skip
    return console, table, measured


def fault_table(results: list[Result], engines: list[str], timeout: float) -> list[str]:
    """Markdown table: per fault and engine, every run's seconds; then whether the goal was met every time."""
    head = ["fault", *engines]
    rows = []
    for fault in dict.fromkeys(r.fault for r in results):
        row = [fault]
        for engine in engines:
            runs = [r for r in results if r.fault == fault and r.engine == engine]
            text = ", ".join(
                cell(r) if r.back is not None or r.fault == SIGTERM else f">{timeout:g}"
                for r in runs
            )
            freed = [r.freed for r in runs if r.freed is not None and r.fault != SIGTERM]
            if fault.startswith("stale port") and freed:
                text += f" (port freed after {', '.join(f'{f:.0f}' for f in freed)})"
            row.append(text)
        rows.append(row)
    widths = [max(len(x) for x in column) for column in zip(head, *rows, strict=True)]
    lines = ["| " + " | ".join(x.ljust(w) for x, w in zip(head, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]  # fmt: skip
    lines += [
        "| " + " | ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    return lines


def goal_lines(results: list[Result]) -> list[str]:
    """One line per deployer fault and engine: the goal, and in how many runs it was met."""
    lines = []
    for fault in dict.fromkeys(r.fault for r in results):
        for engine in dict.fromkeys(r.engine for r in results):
            runs = [r for r in results if r.fault == fault and r.engine == engine]
            if not runs or not engine.startswith("deployer"):
                continue
            verdicts = [r.met for r in runs]
            if all(v is None for v in verdicts):
                lines.append(
                    f"- {fault}, {engine}: no goal applies — the jump host never frees the port"
                    " (only --reclaim can)"
                )
                continue
            if fault == SIGTERM:
                wanted = f"exit and port released within {SIGTERM_GOAL:g} s"
            elif engine.endswith("--reclaim"):
                wanted = f"back within {BACK_GOAL:g} s"
            else:
                wanted = f"back within {BACK_GOAL:g} s of the port being free"
            met = sum(v is True for v in verdicts)
            verdict = "PASS" if met == len(runs) else "FAIL"
            lines.append(f"- {fault}, {engine}: {wanted} — {verdict} ({met} of {len(runs)} runs)")
    return lines
