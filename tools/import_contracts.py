"""import-linter contract types of our own, loaded by `lint-imports` (see pyproject.toml).

``private_names``: no module imports a private name (``_x``) from another module of the package.
A leading underscore means "this module's business"; a name another module needs is made public
(or moves to where both can use it). import-linter's graph knows which modules import which; the
names imported are read from the source with ``ast``.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from grimp import ImportGraph
from importlinter import Contract, ContractCheck, fields, output


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


class PrivateNamesContract(Contract):
    """Modules under `containers` import no private name from another module."""

    type_name = "private_names"
    containers = fields.ListField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        """Parse every module under the containers and collect `from x import _name` across modules."""
        containers = [str(c) for c in self.containers]  # type: ignore[attr-defined]
        violations: list[dict[str, object]] = []
        for module in sorted(graph.modules):
            if not any(module == c or module.startswith(c + ".") for c in containers):
                continue
            spec = importlib.util.find_spec(module)
            if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
                continue
            tree = ast.parse(Path(spec.origin).read_text(), spec.origin)
            for node in ast.walk(tree):
                if not isinstance(node, ast.ImportFrom) or node.module is None or node.level:
                    continue
                if node.module == module or not any(
                    node.module == c or node.module.startswith(c + ".") for c in containers
                ):
                    continue
                for alias in node.names:
                    if _private(alias.name):
                        violations.append({"importer": module, "imported": node.module,
                                           "name": alias.name, "line": node.lineno})  # fmt: skip
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        """One line per private name imported across modules."""
        for item in check.metadata["violations"]:
            output.print_error(
                f"{item['importer']}:{item['line']} imports the private name {item['name']}"
                f" from {item['imported']} — make it public there, or move it where both can use it"
            )
            output.new_line()
