"""What an installation needs: every package listed for the wheel, the templates found, a dry run that
renders a real report (so a broken install fails it), and floors that match the constraints file."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from jinja2 import FileSystemLoader

from analysis import commentary
from bot import cli

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_of_the_tree_is_listed_for_the_wheel():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {
        ".".join(d.relative_to(ROOT).parts)
        for top in ("analysis", "bot")
        for d in [ROOT / top, *(ROOT / top).rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and any(d.iterdir())
    }
    assert found | {"analysis.templates"} == listed  # templates/ is mapped in as analysis.templates
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"analysis.templates": "templates"}


def test_templates_are_found_in_the_checkout():
    assert commentary.TEMPLATES == commentary.templates_dir()
    assert (commentary.TEMPLATES / "summary.md.j2").is_file()


def test_dry_run_renders_a_sample_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.setenv("LIQMAP_SOURCE", "sample")
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'dry.db'}")
    assert cli.main(["bot", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)
    assert re.search(r"sample report: BTCUSDT 7d rendered from the bundled sample: chart [\d,]+ bytes", err)


def test_dry_run_fails_clearly_when_a_template_is_missing(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "no-templates"
    empty.mkdir()
    monkeypatch.setattr(commentary, "TEMPLATES", empty)
    monkeypatch.setattr(commentary._env, "loader", FileSystemLoader(str(empty)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.setenv("LIQMAP_SOURCE", "sample")
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'dry.db'}")
    assert cli.main(["bot", "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no command definitions: the dry run did not pass
    (line,) = err.strip().splitlines()[-1:]
    assert line.startswith("error: the commentary template ") and str(empty) in line and "incomplete" in line
    assert "Traceback" not in err


def _floors(requirements: list[str]) -> dict[str, str]:
    out = {}
    for req in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?>=([^,;\s]+).*", req.replace(" ", ""))
        assert m, f"{req!r} has no lower bound"
        out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out


def test_declared_floors_equal_the_constraints_file():
    project = PYPROJECT["project"]
    declared = _floors(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared.update(_floors(extra))
    pinned = {}
    for line in (ROOT / "constraints" / "floors.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, ver = line.partition("==")
            pinned[re.sub(r"[-_.]+", "-", name).lower()] = ver
    assert declared == pinned
