"""The private-names contract (tools/import_contracts.py) catches what it should, and only that.

`./dev test` runs lint-imports on deployer itself; these tests show the contract can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))

CONFIG = """
[importlinter]
root_package = pkg
contract_types =
    private_names: tools.import_contracts.PrivateNamesContract

[importlinter:contract:private]
name = No private names across modules
type = private_names
containers =
    pkg
"""


def lint(config: Path, cwd: Path, pythonpath: list[Path]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath)}
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(config), "--no-cache"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def make_package(root: Path, b_source: str) -> None:
    package = root / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        "def _helper() -> int:\n    return 1\n\n\ndef public() -> int:\n    return 2\n"
    )
    (package / "b.py").write_text(textwrap.dedent(b_source))


def test_a_private_name_imported_across_modules_breaks_the_contract(tmp_path: Path) -> None:
    make_package(tmp_path, "from pkg.a import (\n    public,\n    _helper,\n)\n")
    (tmp_path / "setup.cfg").write_text(CONFIG)
    result = lint(tmp_path / "setup.cfg", tmp_path, [tmp_path, REPO])
    assert result.returncode != 0, result.stdout
    assert "pkg.b:1 imports the private name _helper from pkg.a" in " ".join(result.stdout.split())


def test_public_names_and_dunders_keep_it(tmp_path: Path) -> None:
    make_package(tmp_path, "from pkg.a import public\nfrom pkg import __name__ as name\n")
    (tmp_path / "setup.cfg").write_text(CONFIG)
    result = lint(tmp_path / "setup.cfg", tmp_path, [tmp_path, REPO])
    assert result.returncode == 0, result.stdout + result.stderr
