#!/usr/bin/env python3
"""Benchmark `deployer tunnel`: throughput against plain `ssh -R`, and recovery from faults against autossh.

    sudo python bench/tunnel.py                 # everything, 3 runs per fault (about 35 minutes)
    sudo python bench/tunnel.py throughput      # only the throughput table
    sudo python bench/tunnel.py faults --quick  # 20 s instead of 60 s cut, 60 s timeout, 1 run (~9 min)
    sudo python bench/tunnel.py faults --only "drop the live flow" --engines "deployer --reclaim"
    ... --json bench/results/tunnel.json --markdown bench/results/tunnel.md

Throughput: bytes sent by a client on the jump host into the tunnel port, through the tunnel, into a
sink on the intranet side (the forward's target), for plain `ssh -N -R`, `deployer tunnel` and a
paramiko reverse forward (the engine deployer did not choose), alternating, median of the runs;
and the CPU time the intranet side spends per GiB (ssh, or deployer + its ssh, or the paramiko
process). The ssh engines use OpenSSH's default cipher; paramiko its fastest (aes128-gcm).

Faults: the jump host's sshd runs in a network namespace (ClientAliveInterval 5, CountMax 3); each
engine keeps `-R PORT:127.0.0.1:<target sshd>`; after each fault a client on the jump host
connects to the tunnel port twice a second until it gets the target's SSH banner. The time is
counted from the end of the fault (the flow drops are permanent: from the drop). In "idle" rows
nobody connects to the port until its holder changed, since connections to a stale listener keep
sshd from ever reaping it. SIGTERM rows: seconds until the keeper exited / until the jump host
stopped listening. Each row is checked against the issue's goals: back within 10 s of the port
being free (at the fault's end, or when the jump host reaped the stale session), within 10 s
with --reclaim, and exit plus port released within 5 s after SIGTERM. autossh runs with the
usual settings: -M 0 -o ServerAliveInterval=30 -o ServerAliveCountMax=3 -o ExitOnForwardFailure=yes,
and AUTOSSH_GATETIME=0 (without it autossh exits for good when ssh fails within 30 s of starting).

Needs root (namespaces, nft), OpenSSH's sshd, and autossh (apt-get install -y autossh).

This file is the command line and the write-up; the parts are bench/tunnel_lab.py (the sshd's and
the namespace), bench/tunnel_engines.py (the keepers), bench/tunnel_throughput.py,
bench/tunnel_faults.py and bench/tunnel_report.py (tables and goal lines).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

# Run as a script (`sudo python bench/tunnel.py`), Python puts bench/ on sys.path, not the
# repository root: the root makes `bench.*`, `tests.integration.*` and this checkout's `deployer`
# importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tunnel_faults import CLIENT_ALIVE, faults
from bench.tunnel_report import THROUGHPUT_HEAD, fault_table, goal_lines, throughput_lines
from bench.tunnel_throughput import throughput
from tests.integration.netns import available


def versions() -> dict[str, str]:
    """The software the figures depend on."""
    found = {"ssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()}
    if shutil.which("autossh"):
        found["autossh"] = subprocess.run(
            ["autossh", "-V"], capture_output=True, text=True
        ).stdout.strip()
    found["cpus"] = str(os.cpu_count())
    return found


def parse_args() -> argparse.Namespace:
    """The options (sys.argv)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", choices=("all", "throughput", "faults"), default="all")
    parser.add_argument(
        "--quick", action="store_true", help="20 s instead of 60 s cut; 60 s timeout; one run"
    )
    parser.add_argument("--size-mb", type=int, default=512, help="bytes per throughput run (MiB)")
    parser.add_argument("--runs", type=int, default=3, help="throughput runs per engine")
    parser.add_argument(
        "--repeat", type=int, help="runs of every fault per engine (default 3; --quick 1)"
    )
    parser.add_argument("--only", metavar="TEXT", help="only the faults whose name contains TEXT")
    parser.add_argument(
        "--engines", help="comma-separated (default: deployer,deployer --reclaim,autossh)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the tables and the goals here")
    return parser.parse_args()


def run_throughput(
    args: argparse.Namespace, report: dict[str, object], markdown: list[str]
) -> None:
    """Measure the three paths, print the table, add it to report and markdown."""
    title = f"Throughput through the tunnel ({args.size_mb} MiB per run, median of {args.runs}, same run)"
    print(f"\n{title}:")
    markdown.append(f"## {title}\n")
    paths = [("loopback", False, None, args.size_mb), ("veth between namespaces", True, None, args.size_mb),
             ("veth capped at 200 Mbit/s (tbf)", True, "200mbit", max(16, args.size_mb // 8))]  # fmt: skip
    table = list(THROUGHPUT_HEAD)
    measured: list[dict[str, object]] = []
    for label, in_ns, rate, size in paths:
        console, rows, records = throughput_lines(
            label, size, throughput(size, args.runs, in_ns, rate)
        )
        print(*console, sep="\n")
        table += rows
        measured += records
    report["throughput"] = measured
    markdown += [*table, ""]


def run_faults(args: argparse.Namespace, report: dict[str, object], markdown: list[str]) -> None:
    """Every fault against every engine: print the table and the goals, add them to report and markdown."""
    engines = ["deployer", "deployer --reclaim"]
    if args.engines:
        engines = [e.strip() for e in args.engines.split(",")]
    elif shutil.which("autossh"):
        engines.append("autossh")
    else:
        print("(autossh is not installed: apt-get install -y autossh — comparing deployer only)")
    timeout = 60.0 if args.quick else 150.0
    repeat = args.repeat or (1 if args.quick else 3)
    title = "Recovery: seconds from the end of the fault to a working tunnel"
    print(f"\n{title} (timeout {timeout:g} s); jump host sshd ClientAliveInterval"
          f" {CLIENT_ALIVE[0]}, ClientAliveCountMax {CLIENT_ALIVE[1]}.")  # fmt: skip
    results = faults(args.quick, engines, repeat, timeout, args.only)
    table = fault_table(results, engines, timeout)
    goals = goal_lines(results)
    print("", *table, "", *goals, sep="\n")
    report["faults"] = [vars(r) | {"met": r.met} for r in results]
    report["client_alive"] = CLIENT_ALIVE
    markdown += [
        f"## {title}\n",
        f"Jump host sshd: ClientAliveInterval {CLIENT_ALIVE[0]}, ClientAliveCountMax {CLIENT_ALIVE[1]};"
        f" timeout {timeout:g} s; {repeat} run(s) per cell, comma-separated (a cell that did not come"
        " back is not repeated). SIGTERM: seconds to exit / seconds until the jump host stopped listening.\n",
        *table,
        "",
        "Goals (deployer):\n",
        *goals,
        "",
    ]


def main() -> None:
    """Run what the options ask for, print it, and write the JSON and Markdown files."""
    args = parse_args()
    # stopped with SIGTERM: still run the clean-ups (servers, namespace) on the way out
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    problem = available()
    if problem:
        sys.exit(f"bench/tunnel.py: {problem}")
    command = "python bench/tunnel.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])  # as root
    report: dict[str, object] = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "versions": versions(),
    }
    software = "; ".join(f"{k}: {v}" for k, v in versions().items())
    markdown = [
        f"# deployer tunnel benchmark\n\nCommand: `{command}` ({report['date']}; {software})\n"
    ]
    if args.what in ("all", "throughput"):
        run_throughput(args, report, markdown)
    if args.what in ("all", "faults"):
        run_faults(args, report, markdown)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text("\n".join(markdown))


if __name__ == "__main__":
    main()
