"""action.yml, the GitLab template and component, and the docs' examples against the published schemas.

check-jsonschema's offline copies of the schemas GitHub and GitLab publish (vendor.github-actions,
vendor.github-workflows, vendor.gitlab-ci). The component's two YAML documents (spec header and
jobs) are validated apart, raw and with its inputs interpolated as GitLab would.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.ci.summary import render_summary, step_outputs

ROOT = Path(__file__).resolve().parents[3]
ACTION = ROOT / "action.yml"
TEMPLATE = ROOT / "gitlab-templates" / "deploy.gitlab-ci.yml"
COMPONENT = ROOT / "gitlab-templates" / "templates" / "deploy.yml"
INPUT = re.compile(r"\$\[\[\s*inputs\.([\w-]+)\s*\]\]")
SECRETS = (
    "SSH_PRIVATE_KEY",
    "SSH_KNOWN_HOSTS",
    "DEPLOYER_WEBHOOK_SECRET",
    "SSH_PRIVATE_KEY_PASSPHRASE",
)


def check(schema: str, *files: Path) -> None:
    """Validate files with check-jsonschema's built-in copy of a vendor schema."""
    done = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *map(str, files)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def component_documents() -> tuple[dict[str, Any], str]:
    """The spec header (parsed) and the jobs document (text, before interpolation)."""
    header, _, body = COMPONENT.read_text().partition("\n---\n")
    return yaml.safe_load(header), body


def interpolate(body: str, inputs: dict[str, str]) -> str:
    """Replace $[[ inputs.NAME ]] the way GitLab does for string inputs."""
    return INPUT.sub(lambda m: inputs[m.group(1)], body)


def test_action_matches_the_github_actions_schema() -> None:
    check("vendor.github-actions", ACTION)


def test_template_matches_the_gitlab_ci_schema() -> None:
    check("vendor.gitlab-ci", TEMPLATE)


def test_component_documents_match_the_gitlab_ci_schema(tmp_path: Path) -> None:
    header, body = component_documents()
    spec = header["spec"]["inputs"]
    values = {
        name: str(item.get("default", "")) or f"value-of-{name}" for name, item in spec.items()
    }
    files = {
        "header.yml": yaml.safe_dump(header),
        "jobs.yml": body,
        "interpolated.yml": interpolate(body, values),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    check("vendor.gitlab-ci", *(tmp_path / name for name in files))
    jobs = yaml.safe_load(interpolate(body, values))
    job = jobs[values["job-name"]]
    assert job["resource_group"] == job["environment"]["name"] == "production"
    assert job["extends"] == ".deployer"


def test_component_inputs_are_all_used_and_none_is_a_secret() -> None:
    header, body = component_documents()
    declared = set(header["spec"]["inputs"])
    used = set(INPUT.findall(body))
    assert used == declared
    for name in declared:
        assert (
            name.upper().replace("-", "_") not in SECRETS
            and "key" not in name
            and "secret" not in name
        )


def test_template_and_component_share_one_hidden_job() -> None:
    _, body = component_documents()
    from_component = yaml.safe_load(body)[".deployer"]
    template = yaml.safe_load(TEMPLATE.read_text())
    from_template = template[".deployer"]
    # The template's defaults are pipeline variables (the including pipeline's own override
    # them); the component's come from its inputs, as job variables.
    assert from_component.pop("variables") == {
        "DEPLOYER_VERSION": "$[[ inputs.version ]]",
        "DEPLOYER_PYTHON": "$[[ inputs.python ]]",
    }
    assert set(template["variables"]) == {"DEPLOYER_VERSION", "DEPLOYER_PYTHON"}
    assert from_component == from_template
    assert all(secret not in yaml.safe_dump(from_template) for secret in SECRETS)


def test_the_virtualenv_is_cached_per_deployer_and_python_version() -> None:
    job = yaml.safe_load(TEMPLATE.read_text())[".deployer"]
    assert job["cache"] == {
        "key": "deployer-ci-${DEPLOYER_VERSION}-python${DEPLOYER_PYTHON}",
        "paths": [".deployer-ci/"],
        "when": "always",
    }
    assert job["image"] == "python:${DEPLOYER_PYTHON}-slim"
    script = "\n".join(job["before_script"])
    # inside the project: GitLab caches nothing outside it
    assert 'deployer_venv="$PWD/.deployer-ci/venv"' in script
    header, _ = component_documents()
    assert header["spec"]["inputs"]["image"]["default"] == job["image"]


def test_action_binds_inputs_through_env_only() -> None:
    action = yaml.safe_load(ACTION.read_text())
    steps = action["runs"]["steps"]
    scripts = [step for step in steps if "run" in step]
    assert all("${{" not in step["run"] for step in scripts)
    bound = " ".join(str(v) for step in scripts for v in (step.get("env") or {}).values())
    for name in action["inputs"]:
        assert f"${{{{ inputs.{name} }}}}" in bound, name
        assert name.upper().replace("-", "_") not in SECRETS
    assert "${{ github.action_path }}" in bound  # installed from the action's own checkout
    (cache,) = [step for step in steps if "uses" in step]  # the only other action it runs
    assert re.fullmatch(r"actions/cache@[0-9a-f]{40}", cache["uses"])  # pinned to a commit
    assert cache["with"] == {
        "path": "${{ steps.venv.outputs.path }}",
        "key": "${{ steps.venv.outputs.key }}",
    }


def _yaml_blocks(doc: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / doc).read_text(), re.S)


@pytest.mark.parametrize(("doc", "schema"), [("gitlab.md", "vendor.gitlab-ci"),
                                             ("github-actions.md", "vendor.github-workflows")])  # fmt: skip
def test_documented_examples_match_the_schemas(doc: str, schema: str, tmp_path: Path) -> None:
    blocks = _yaml_blocks(doc)
    assert blocks
    files = []
    for index, block in enumerate(blocks):
        files.append(tmp_path / f"example-{index}.yml")
        files[-1].write_text(block)
    check(schema, *files)


def test_summary_of_a_fleet_push() -> None:
    document = {"ok": False, "error": "healthcheck `curl | grep up` failed", "exit_code": 9, "targets": [
        {"target": "a@h1", "status": "rolled-back", "release": "R2", "previous": "R1", "seconds": 2.25,
         "error": "switched back"},
        {"target": "a@h2", "status": "skipped", "error": "an earlier target failed"}]}  # fmt: skip
    text = render_summary(document, 9)
    assert text.splitlines()[0] == "### deployer push: failed"
    assert (
        "Exit 9 (hook): healthcheck `curl \\| grep up` failed" in text
    )  # pipes cannot break the table
    assert "| a@h1 | ↩️ rolled-back: switched back | R2 | R1 | 2.2 |" in text
    assert "| a@h2 | ⏭️ skipped: an earlier target failed |  |  | 0.0 |" in text
    assert step_outputs(document) == {"release": "", "status": "failure"}


def test_summary_shows_the_failed_healthcheck_output_in_a_fence_nothing_closes() -> None:
    check = {"command": "curl -fsS localhost/up", "attempts": 3, "delay": 0,
             "output": ["curl: (7) Failed to connect", "``` not the end", "<b>x</b>"]}  # fmt: skip
    document = {"ok": False, "error": "healthcheck failed", "exit_code": 9, "targets": [
        {"target": "a@h1", "status": "failed", "details": {"healthcheck": check}},
        {"target": "a@h2", "status": "reverted", "details": {}}]}  # fmt: skip
    lines = render_summary(document, 9).splitlines()
    opening = lines.index(
        "<details><summary>a@h1: healthcheck `curl -fsS localhost/up` failed 3 time(s): its last"
        " output</summary>"
    )
    assert lines[opening + 2 : opening + 7] == [
        "````text", "curl: (7) Failed to connect", "``` not the end", "<b>x</b>", "````"
    ]  # fmt: skip
    assert sum(line.startswith("<details>") for line in lines) == 1  # a@h2 had no failed check
