"""A Markdown job summary (GitHub's $GITHUB_STEP_SUMMARY) from the ``deployer push --json`` document.

Run by the GitHub Action as ``python -m deployer.ci.summary RESULT.json --exit-code N``; it also
writes the step outputs (``release``, ``status``) when ``--github-output FILE`` is given.
"""

from __future__ import annotations

import argparse
import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deployer.errors import ExitCode

_ICONS = {"deployed": "✅", "planned": "📝", "failed": "❌", "rolled-back": "↩️", "skipped": "⏭️"}


def read_result(path: Path) -> dict[str, Any] | None:
    """The --json document, or None when the push stopped before printing one."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _cell(value: object) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _exit_meaning(code: int) -> str:
    try:
        return ExitCode(code).name.lower().replace("_", " ")
    except ValueError:
        return "error"


def render_summary(document: Mapping[str, Any] | None, exit_code: int) -> str:
    """The Markdown summary: overall result, then one row per target."""
    if document is None:
        return (
            "### deployer push: failed\n\n"
            f"deployer stopped before reaching any target (exit {exit_code}, "
            f"{_exit_meaning(exit_code)}): its one-line error is in the step's log.\n"
        )
    ok = bool(document.get("ok"))
    targets: Sequence[Mapping[str, Any]] = document.get("targets") or []
    dry_run = bool(targets) and all(t.get("status") == "planned" for t in targets)
    headline = "dry run" if ok and dry_run else "deployed" if ok else "failed"
    lines = [f"### deployer push: {headline}", ""]
    if not ok:
        lines += [
            f"Exit {exit_code} ({_exit_meaning(exit_code)}): {_cell(document.get('error') or '')}",
            "",
        ]
    lines += ["| target | result | release | previous | seconds |", "|---|---|---|---|---|"]
    for target in targets:
        status = str(target.get("status", ""))
        result = f"{_ICONS.get(status, '')} {status}".strip()
        if target.get("error"):
            result += f": {target['error']}"
        seconds = float(target.get("seconds") or 0.0)
        row = (target.get("target", ""), result, target.get("release", ""),
               target.get("previous", ""), f"{seconds:.1f}")  # fmt: skip
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    for target in targets:
        lines += _healthcheck_output(target)
    return "\n".join(lines) + "\n"


def _healthcheck_output(target: Mapping[str, Any]) -> list[str]:
    """A failed healthcheck's last output as a collapsed block (the --json document is masked)."""
    check = (target.get("details") or {}).get("healthcheck")
    if not isinstance(check, Mapping):
        return []
    output = [str(line) for line in check.get("output") or []]
    # a fence longer than any run of backticks in the output, so that none can close it
    fence = "`" * max([3, *(len(run) + 1 for line in output for run in re.findall(r"`+", line))])
    title = f"{_cell(target.get('target', ''))}: healthcheck `{_cell(check.get('command', ''))}`"
    attempts = int(check.get("attempts") or 0)
    return [
        "",
        f"<details><summary>{html.escape(title)} failed {attempts} time(s): its last output</summary>",
        "",
        fence + "text",
        *(output or ["(nothing)"]),
        fence,
        "</details>",
    ]


def step_outputs(document: Mapping[str, Any] | None) -> dict[str, str]:
    """GitHub step outputs: the release id deployed (first target) and the overall status."""
    targets: Sequence[Mapping[str, Any]] = (document or {}).get("targets") or []
    release = next((str(t["release"]) for t in targets if t.get("status") == "deployed"), "")
    ok = document is not None and bool(document.get("ok"))
    return {"release": release, "status": "success" if ok else "failure"}


def main(argv: Sequence[str] | None = None) -> None:
    """Append the summary to --summary (default stdout) and the outputs to --github-output."""
    parser = argparse.ArgumentParser(prog="python -m deployer.ci.summary")
    parser.add_argument("result", type=Path, help="file holding deployer push --json output")
    parser.add_argument("--exit-code", type=int, required=True, help="deployer push's exit status")
    parser.add_argument("--summary", type=Path, help="file to append the Markdown to")
    parser.add_argument("--github-output", type=Path, help="$GITHUB_OUTPUT to append outputs to")
    args = parser.parse_args(argv)
    document = read_result(args.result)
    text = render_summary(document, args.exit_code)
    if args.summary is None:
        print(text, end="")
    else:
        with args.summary.open("a") as handle:
            handle.write(text)
    if args.github_output is not None:
        with args.github_output.open("a") as handle:
            for name, value in step_outputs(document).items():
                handle.write(f"{name}={value}\n")


if __name__ == "__main__":
    main()
