"""The `bidsafe` command's conventions (issue 16 item 8): help for every argument, documented exit codes that
the commands really return, -v/-q, --force where a command would overwrite, progress that shows counts only,
a private deid --report, and one secret-key rule shared by `bidsafe deid` and the pipeline."""

from __future__ import annotations

import argparse
import json
import logging
import re
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsafe.cli import build_parser, main
from bidsafe.errors import ConfigError
from bidsafe.keys import KEY_FILENAME, load_key, resolve_key_path
from bidsafe.progress import Progress, console_logging

from helpers.cli_parsers import subcommand_parsers
from helpers.deid_testing import mr_dataset, write

REPO = Path(__file__).resolve().parents[2]


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def documented_codes(command: str, capsys: pytest.CaptureFixture[str]) -> set[int]:
    """The exit codes a command's --help lists under `exit codes:`."""
    text = _help(command, capsys)
    assert "\nexit codes:\n" in text, f"{command} --help has no exit codes section"
    section = text.split("\nexit codes:\n", 1)[1]
    return {int(m) for m in re.findall(r"^  (\d+) ", section, flags=re.MULTILINE)}


# --- help ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(subcommand_parsers()))
def test_every_command_documents_its_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    codes = documented_codes(command, capsys)
    assert {0, 2, 130} <= codes, (command, codes)
    # 75 (EX_TEMPFAIL): a scheduled command found another run of it in progress (bidsafe.runlock)
    assert codes <= {0, 1, 2, 3, 75, 130}, (command, codes)


def test_every_argument_has_help_positionals_included() -> None:
    parsers = {"bidsafe": build_parser(), **subcommand_parsers()}
    missing = [
        f"{name} {action.dest}"
        for name, parser in parsers.items()
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction | argparse._VersionAction)
        and not (action.help or "").strip()
    ]
    assert missing == []
    positionals = [a for p in parsers.values() for a in p._actions if not a.option_strings and a.dest != "command"]
    assert len(positionals) >= 10  # the positionals are among those checked


def test_deid_report_is_marked_private_and_key_rule_documented(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(_help("deid", capsys).split())
    assert "--report FILE.json write the per-file report here; PRIVATE" in text
    assert "--configfile SITE.yaml or --private-dir DIR gives PRIVATE_DIR/secret.key" in text


def test_verbosity_flags_before_or_after_the_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["-q", "verify", "R"]).verbosity == -1
    assert parser.parse_args(["verify", "-q", "R"]).verbosity == -1
    assert parser.parse_args(["verify", "--verbose", "R"]).verbosity == 1
    assert parser.parse_args(["verify", "R"]).verbosity == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["verify", "-q", "-v", "R"])


# --- the documented codes are the returned codes ----------------------------------------------------------


def _zero_image(path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), dtype=np.int16), np.eye(4)), str(path))
    return path


def _dataset(root: Path, text: str) -> Path:
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}\n')
    (root / "sub-01" / "anat" / "sub-01_T1w.json").write_text(json.dumps({"RepetitionTime": 2.3, "Note": text}))
    return root


def test_returned_codes_are_documented(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    codes = {name: documented_codes(name, capsys) for name in subcommand_parsers()}
    seen: dict[tuple[str, str], int] = {}

    def run(case: str, argv: list[str]) -> int:
        code = main(argv)
        capsys.readouterr()
        assert code in codes[argv[0]], (argv[0], case, code)
        seen[(argv[0], case)] = code
        return code

    values = tmp_path / "values.json"
    values.write_text(json.dumps([{"category": "name", "field": "PatientName", "value": "Quillfeather^Marisol"}]))
    clean = _dataset(tmp_path / "clean", "unremarkable")
    dirty = _dataset(tmp_path / "dirty", "scanned Marisol Quillfeather")
    assert run("clean", ["leak-scan", str(clean), "--values", str(values)]) == 0
    assert run("hit", ["leak-scan", str(dirty), "--values", str(values)]) == 1
    assert run("usage", ["leak-scan", str(clean)]) == 2

    assert run("shipped", ["check-rules"]) == 0
    assert run("missing", ["check-rules", str(tmp_path / "missing.yaml")]) == 2

    assert run("guard", ["deface", str(_zero_image(tmp_path / "zero.nii.gz")), str(tmp_path / "o.nii.gz")]) == 3
    assert not (tmp_path / "o.nii.gz").exists()

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "notes.txt").write_text("not dicom")
    assert run("no study", ["ingest", str(inbox), "--index", str(tmp_path / "i.tsv"),
                            "--quarantine", str(tmp_path / "q.tsv")]) == 1
    assert run("inside inbox", ["ingest", str(inbox), "--index", str(inbox / "i.tsv"),
                                "--quarantine", str(tmp_path / "q.tsv")]) == 2

    bad = tmp_path / "bad.yaml"
    bad.write_text("inbox: 1\n")
    assert run("invalid", ["check-config", str(bad)]) == 2
    stale = tmp_path / "README.md"
    stale.write_text("old\n")
    assert run("differs", ["config-docs", "--check", str(stale)]) == 1

    release = tmp_path / "release"
    release.mkdir()
    (release / "a.txt").write_text("a\n")
    from bidsafe.release.manifest import SHAREABLE_NAME, seal_shareable, write_manifest

    _, digest, _ = write_manifest(release)
    record = seal_shareable({"shareable": True, "manifest": {"sha256": digest}})
    (release / SHAREABLE_NAME).write_text(json.dumps(record))
    assert run("intact", ["verify", str(release)]) == 0
    (release / "a.txt").write_text("b\n")
    assert run("changed", ["verify", str(release)]) == 1

    raw = tmp_path / "raw"
    write(mr_dataset(), raw / "a.dcm")
    assert run("no key", ["deid", str(raw), str(tmp_path / "d0")]) == 2
    assert run("done", ["deid", str(raw), str(tmp_path / "d1"), "--private-dir", str(tmp_path / "private")]) == 0
    assert set(seen.values()) == {0, 1, 2, 3}


# --- --force ------------------------------------------------------------------------------------------------


def test_deface_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _zero_image(tmp_path / "zero.nii.gz")
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"earlier result")
    assert main(["deface", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert "give --force to replace it" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"earlier result"
    # with --force the command goes on (and here the guard refuses the empty image: still nothing written)
    assert main(["deface", str(src), str(out), "--force"]) == 3
    assert out.read_bytes() == b"earlier result"
    qc = tmp_path / "qc.png"
    qc.write_bytes(b"png")
    assert main(["deface", str(src), str(tmp_path / "new.nii.gz"), "--qc", str(qc)]) == 2


def test_demo_data_refuses_a_non_empty_folder_without_force(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "inbox"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["demo-data", str(out), "--subjects", "1"]) == 2
    assert "give --force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    consent = tmp_path / "consent.tsv"
    consent.write_text("filled in by hand\n")
    assert main(["demo-data", str(tmp_path / "fresh"), "--consent", str(consent)]) == 2
    assert consent.read_text() == "filled in by hand\n" and not (tmp_path / "fresh").exists()
    assert main(["-q", "demo-data", str(out), "--subjects", "1", "--force"]) == 0
    assert (out / "keep.txt").read_text() == "mine"
    assert len(list(out.rglob("*.dcm"))) > 5


# --- -q / -v and progress -------------------------------------------------------------------------------------


def _progress_lines(err: str) -> list[str]:
    return [part for part in re.split(r"[\r\n]", err) if "steps" in part]


def test_progress_shows_counts_only_and_quiet_hides_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    src = _zero_image(tmp_path / "Quillfeather_T1w.nii.gz")
    monkeypatch.setenv("BIDSAFE_PROGRESS", "1")
    assert main(["deface", str(src), str(tmp_path / "a.nii.gz")]) == 3
    lines = _progress_lines(capsys.readouterr().err)
    assert lines and all(line.startswith("bidsafe deface: ") for line in lines)
    assert any("0/2 steps" in line for line in lines)
    assert not any("quillfeather" in line.lower() or str(tmp_path) in line for line in lines)
    assert main(["-q", "deface", str(src), str(tmp_path / "b.nii.gz")]) == 3
    assert _progress_lines(capsys.readouterr().err) == []
    monkeypatch.setenv("BIDSAFE_PROGRESS", "0")
    assert main(["deface", str(src), str(tmp_path / "c.nii.gz")]) == 3
    assert _progress_lines(capsys.readouterr().err) == []


def test_progress_counter_is_throttled_and_ends_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    meter = Progress("bidsafe x: reading", 3, enabled=True, every_s=0)
    for number in (1, 2, 3):
        meter.update(number)
    meter.done()
    err = capsys.readouterr().err
    assert "\rbidsafe x: reading: 3/3 files" in err and err.endswith("\n")
    quiet = Progress("bidsafe x", 3, enabled=True, every_s=3600)  # nothing before every_s has passed
    quiet.update(1)
    quiet.done()
    assert capsys.readouterr().err == ""


def test_console_logging_levels_and_restoration(capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("bidsafe.test")
    before = logging.getLogger("bidsafe").level
    for verbosity, shown in ((-1, {"warn"}), (0, {"warn", "info"}), (1, {"warn", "info", "debug"})):
        with console_logging(verbosity):
            log.debug("debug")
            log.info("info")
            log.warning("warn")
        err = capsys.readouterr().err
        assert {word for word in ("debug", "info", "warn") if f": {word}\n" in err} == shown
    assert logging.getLogger("bidsafe").level == before
    log.warning("after")
    assert "bidsafe: WARNING" not in capsys.readouterr().err


def test_quiet_hides_informational_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values = tmp_path / "values.json"
    values.write_text(json.dumps([{"category": "name", "field": "PatientName", "value": "Quillfeather^Marisol"}]))
    clean = _dataset(tmp_path / "clean", "unremarkable")
    assert main(["leak-scan", str(clean), "--values", str(values)]) == 0
    assert "leak scan: clean" in capsys.readouterr().err
    assert main(["leak-scan", "-q", str(clean), "--values", str(values)]) == 0
    assert capsys.readouterr().err == ""


# --- deid --report and the key rule -------------------------------------------------------------------------


def test_deid_report_is_written_0600(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write(mr_dataset(), raw / "a.dcm")
    report = tmp_path / "report.json"  # in an ordinary (not private) folder: the file itself is still 0600
    assert main(["deid", str(raw), str(tmp_path / "out"), "--private-dir", str(tmp_path / "p"),
                 "--report", str(report)]) == 0
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    assert json.loads(report.read_text())["files"][0]["input"].endswith("a.dcm")


def test_resolve_key_path_one_rule(tmp_path: Path) -> None:
    assert resolve_key_path(key=tmp_path / "k") == tmp_path / "k"
    assert resolve_key_path(private_dir=tmp_path / "p") == tmp_path / "p" / KEY_FILENAME
    site = tmp_path / "site.yaml"
    site.write_text(f"inbox: {tmp_path}/in\nprivate_dir: {tmp_path}/team\nwork_dir: {tmp_path}/w\n"
                    f"release_dir: {tmp_path}/r\n")
    assert resolve_key_path(configfile=site) == tmp_path / "team" / KEY_FILENAME
    with pytest.raises(ConfigError, match="--configfile SITE.yaml or --private-dir DIR"):
        resolve_key_path()
    with pytest.raises(ConfigError, match="not --key and --private-dir"):
        resolve_key_path(key=tmp_path / "k", private_dir=tmp_path / "p")


def test_deid_and_the_pipeline_use_the_same_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bidsafe.pseudonymise.linkage import update_linkage

    private = tmp_path / "team"
    key, _ = update_linkage(private, [], "hmac")  # the pseudonymise stage makes the pipeline's key
    site = tmp_path / "site.yaml"
    site.write_text(f"inbox: {tmp_path}/in\nprivate_dir: {private}\nwork_dir: {tmp_path}/w\n"
                    f"release_dir: {tmp_path}/r\n")
    raw = tmp_path / "raw"
    write(mr_dataset(), raw / "a.dcm")
    assert main(["deid", str(raw), str(tmp_path / "out"), "--configfile", str(site)]) == 0
    assert f"secret key read from {private / KEY_FILENAME}" in capsys.readouterr().err
    assert load_key(private / KEY_FILENAME) == key
    assert sorted(p.name for p in private.iterdir() if p.name.endswith(".key")) == [KEY_FILENAME]
    # the workflow names no key path of its own: it asks the same function
    rules = {p.name: p.read_text(encoding="utf-8") for p in (REPO / "workflow").rglob("*.smk")}
    assert not [name for name, text in rules.items() if "secret.key" in text]
    assert "KEY = resolve_key_path(private_dir=PRIVATE)" in rules["common.smk"]
    assert "key=KEY," in rules["deid.smk"]


@pytest.mark.parametrize("command", ["ingest", "leak-scan", "deid"])
def test_progress_of_file_loops_names_no_path(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import bidsafe.progress as progress_module

    real_init = Progress.__init__

    def immediate(self: Progress, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **{**kwargs, "every_s": 0})  # type: ignore[arg-type]

    monkeypatch.setattr(progress_module.Progress, "__init__", immediate)
    monkeypatch.setenv("BIDSAFE_PROGRESS", "1")
    raw = tmp_path / "QUILLFEATHER_MARISOL"
    for number in range(3):
        write(mr_dataset(sop_uid=f"1.2.826.0.1.3680043.9.7777.1.3.{number}"), raw / f"Quillfeather{number}.dcm")
    argv = {
        "ingest": ["ingest", str(raw), "--index", str(tmp_path / "i.tsv"), "--quarantine", str(tmp_path / "q.tsv")],
        "leak-scan": ["leak-scan", str(_dataset(tmp_path / "ds", "x")), "--source", str(raw)],
        "deid": ["deid", str(raw), str(tmp_path / "out"), "--private-dir", str(tmp_path / "p")],
    }[command]
    main(argv)
    parts = [p for p in re.split(r"[\r\n]", capsys.readouterr().err) if re.search(r": \d+(/\d+)? files", p)]
    assert any("3/3 files" in p for p in parts), parts
    assert not [p for p in parts if "quillfeather" in p.lower() or str(tmp_path) in p]
