"""`probebench check` on planted params: the helpers the hardening tests share."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from probebench.cli import main as cli

runner = CliRunner()


def snapshot(root: Path) -> dict[str, float]:
    """Every path under `root` with its modification time: equal before and after = nothing written."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def write_params(root: Path, raw: dict | str) -> Path:
    path = root / "params.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


def check_fails(root: Path, raw: dict | str, *needles: str) -> str:
    """`probebench check`: exit 2, one `error:` line holding every needle, the directory untouched."""
    path = write_params(root, raw)
    before = snapshot(root)
    result = runner.invoke(cli.app, ["check", str(path)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert snapshot(root) == before
    return lines[0]
