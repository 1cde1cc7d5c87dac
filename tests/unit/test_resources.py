"""Shipped files found through one lookup (bidsafe.resources), and `bidsafe run` on the shipped workflow."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bidsafe import resources
from bidsafe.cli import main as bidsafe_main
from bidsafe.runner import snakemake_command, split_extra, tool_environment

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "bidsafe"
SITE = "inbox: inbox\nprivate_dir: private\nwork_dir: work\nrelease_dir: release\nconsent: none-required\n"


def _setup_shipped() -> tuple[str, ...]:
    """The top-level names setup.py copies into the wheel (read as text: importing setup.py runs a build)."""
    match = re.search(r"^SHIPPED = \(([^)]*)\)", (ROOT / "setup.py").read_text(encoding="utf-8"), re.M)
    assert match, "setup.py: SHIPPED not found"
    return tuple(re.findall(r'"([^"]+)"', match.group(1)))


def test_path_reads_the_repository_files() -> None:
    for name in ("config/deid/basic-mr.yaml", "config/deid/vocabulary.yaml", "config/dcm2bids.json",
                 "config/sidecar_allowlist.yaml", "workflow/schemas/config.schema.yaml", "Snakefile"):
        assert resources.path(name).read_bytes() == (ROOT / name).read_bytes(), name
    assert resources.snakefile().read_bytes() == (ROOT / "Snakefile").read_bytes()
    table = resources.package_file("data/ps315/table_e1_1.json")
    assert table.read_bytes() == (SRC / "data" / "ps315" / "table_e1_1.json").read_bytes()


@pytest.mark.parametrize("name", ["../setup.py", "/etc/passwd", "config/../../x"])
def test_path_refuses_names_outside_the_shipped_tree(name: str) -> None:
    with pytest.raises(ValueError):
        resources.path(name)
    with pytest.raises(ValueError):
        resources.package_file(name)


def test_an_installed_copy_is_preferred_to_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = tmp_path / "_data"
    (packaged / "config" / "deid").mkdir(parents=True)
    (packaged / "Snakefile").write_text("# packaged\n", encoding="utf-8")
    monkeypatch.setattr(resources, "_PACKAGED", packaged)
    assert resources.root() == packaged
    assert resources.path("config/deid/basic-mr.yaml") == packaged / "config" / "deid" / "basic-mr.yaml"
    # Neither complete: the packaged location is named, so the reader's error says what is missing there.
    monkeypatch.setattr(resources, "_CHECKOUT", tmp_path / "nowhere")
    (packaged / "Snakefile").unlink()
    assert resources.root() == packaged


def test_no_module_but_resources_finds_files_from_its_own_location() -> None:
    offenders = [
        f"{path.relative_to(SRC)}:{number}"
        for path in SRC.rglob("*.py")
        if path.name != "resources.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "__file__" in line
    ]
    assert offenders == []


def test_every_file_the_code_looks_up_is_shipped_in_the_wheel_and_sdist() -> None:
    shipped = _setup_shipped()
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8")
    for name in shipped:
        assert (ROOT / name).exists(), name
        assert re.search(rf"^(graft {re.escape(name)}|include .*\b{re.escape(name)}\b)", manifest, re.M), name
    looked_up = {
        literal
        for path in SRC.rglob("*.py")
        for literal in re.findall(r'resources\.path\("([^"]+)"\)', path.read_text(encoding="utf-8"))
    }
    assert "config/deid/basic-mr.yaml" in looked_up
    for literal in looked_up:
        assert literal.split("/")[0] in shipped, literal


def test_snakemake_command_runs_the_shipped_snakefile_with_this_python(tmp_path: Path) -> None:
    command = snakemake_command(Path("site.yaml"), "8", dry_run=True, extra=["converted", "--forcerun", "convert"],
                                python="/opt/venv/bin/python")
    assert command[:3] == ["/opt/venv/bin/python", "-m", "snakemake"]
    assert command[command.index("--snakefile") + 1] == str(resources.snakefile())
    assert Path(command[command.index("--configfile") + 1]).is_absolute()
    assert command[command.index("--cores") + 1] == "8"
    # a job a killed run left half-done is redone by the same command (no flag to remember)
    assert command[-5:] == ["--dry-run", "--rerun-incomplete", "converted", "--forcerun", "convert"]


def test_split_extra_drops_only_the_first_separator() -> None:
    assert split_extra(["converted", "--", "--forcerun", "convert"]) == ["converted", "--forcerun", "convert"]
    assert split_extra(["--", "-p", "--", "x"]) == ["-p", "--", "x"]
    assert split_extra([]) == []


def test_tool_environment_puts_the_interpreter_folder_first_once() -> None:
    env = tool_environment({"PATH": "/usr/bin:/opt/venv/bin:/bin", "HOME": "/h"}, python="/opt/venv/bin/python")
    assert env["PATH"] == "/opt/venv/bin:/usr/bin:/bin"
    assert env["HOME"] == "/h"


def test_run_refuses_a_bad_config_before_starting_snakemake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "site.yaml").write_text(SITE + "release: {audiance: public}\n", encoding="utf-8")
    assert bidsafe_main(["run", "--configfile", "site.yaml", "--cores", "1", "-n"]) == 2
    err = capsys.readouterr().err
    assert "site.yaml" in err and "release.audiance: unknown key" in err and "did you mean 'audience'" in err
    assert not (tmp_path / ".snakemake").exists() and not (tmp_path / "private").exists()
    assert bidsafe_main(["run", "--configfile", "missing.yaml", "-n"]) == 2


def test_run_dry_runs_in_the_current_folder_and_forwards_snakemakes_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inbox").mkdir()
    (tmp_path / "site.yaml").write_text(SITE, encoding="utf-8")
    assert bidsafe_main(["run", "--configfile", "site.yaml", "--cores", "1", "-n"]) == 0
    out = capfd.readouterr()
    assert "This was a dry-run" in out.out + out.err and "rule ingest:" in out.out + out.err
    # data areas relative to the folder the command runs in, and a dry run makes none of them (issue 13: no
    # side effects when Snakemake parses the workflow; the onstart hook makes the private folders of a real run)
    assert (tmp_path / "site.yaml").is_file() and not (tmp_path / "private").exists()
    # An unknown target: Snakemake's own refusal, and its exit code, come back unchanged.
    code = bidsafe_main(["run", "--configfile", "site.yaml", "--cores", "1", "-n", "no_such_target"])
    assert code == 1
    out = capfd.readouterr()
    assert "no_such_target" in out.out + out.err


# --------------------------------------------------------------------------------------------- the README
# Shell blocks of the README are followed literally on a fresh machine: `bidsafe` and `snakemake` are not on
# PATH there (only in .venv/bin, or the site's own venv), so each command names where it runs from.
_RUNNABLE = ("make", "cp", "cat", "source", "python3", ".venv/bin/", "bidsafe-env/bin/")


def _readme_shell_lines() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def test_readme_shell_commands_run_without_activating_a_venv() -> None:
    lines = _readme_shell_lines()
    assert any(line.startswith(".venv/bin/bidsafe run ") for line in lines)
    assert [line for line in lines if not line.startswith(_RUNNABLE)] == []


def test_every_bidsafe_command_the_readme_names_exists() -> None:
    from bidsafe.cli import build_parser

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    # Code only: in backticks, or run from a venv's bin folder.
    named = set(re.findall(r"(?:`|bin/)bidsafe ([a-z][a-z-]+)", text))
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert {"run", "check-rules", "consent-template"} <= named
    assert named - commands == set()
