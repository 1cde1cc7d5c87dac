"""`bidsafe step STAGE`: the command the per-session rules run (bidsafe.steps).

The rules and the stage functions must agree on every option, or a job fails only when a site first runs it:
the rule files are read here and each shell command is checked against the options its stage takes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bidsafe.phi import load_values
from bidsafe.steps import STEPS, option_parameters, put_interpreter_first_on_path, run_step, step_parser

from helpers.mr_instances import mr_instance, save_dicom

ROOT = Path(__file__).resolve().parents[2]


def rule_commands() -> dict[str, str]:
    """stage -> the option text of the rule whose shell command runs `bidsafe step STAGE`."""
    commands = {}
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text(encoding="utf-8")
        for block in re.findall(r"^    shell:\n((?:        .*\n)+)", text, re.M):
            command = "".join(re.findall(r'"([^"]*)"', block))
            step = re.match(r"bidsafe step (\w+) (.*)", command)
            if step:
                commands[step[1]] = step[2]
    return commands


def test_every_per_session_stage_has_one_rule_running_it() -> None:
    assert set(rule_commands()) == set(STEPS) == {"harvest", "deid", "convert", "scrub", "deface", "qc"}


@pytest.mark.parametrize("stage", sorted(STEPS))
def test_a_rule_passes_every_required_option_of_its_stage_and_only_options_it_takes(stage: str) -> None:
    given = re.findall(r"--([a-z-]+) ", rule_commands()[stage] + " ")
    assert len(given) == len(set(given)), f"{stage}: an option given twice"
    known = {p.name.replace("_", "-"): p for p, _, _ in option_parameters(stage)}
    assert set(given) - {"log"} <= set(known), f"{stage}: unknown {sorted(set(given) - set(known) - {'log'})}"
    required = {name for name, p in known.items() if p.default is p.empty}
    assert "log" in given and required <= set(given), f"{stage}: missing {sorted(required - set(given))}"


def test_options_are_typed_by_the_stage_function_annotations(tmp_path: Path) -> None:
    args = step_parser("deface").parse_args([
        "--log", "x.log", "--in-dir", "in", "--out-bids", "out", "--status-json", "s.json",
        "--records-json", "r.json", "--pictures-dir", "qc", "--exempt", '{"T2w": "a cohort reason"}',
        "--suffixes", "T2w", "FLAIR", "--templates", '[{"subjects": ["01"], "head": "h.nii.gz"}]',
        "--applyto", "False", "--subject", "01", "--session", "02",
    ])
    assert args.exempt == {"T2w": "a cohort reason"}
    assert args.templates == [{"subjects": ["01"], "head": "h.nii.gz"}]
    assert args.suffixes == ["T2w", "FLAIR"] and args.applyto is False
    assert args.in_dir == Path("in") and args.subject == "01"
    assert not hasattr(args, "engine")  # not given: the function's default applies
    deid = step_parser("deid").parse_args([
        "--log", "x", "--status-json", "s", "--files-txt", "f", "--inbox", "i", "--out-dir", "o",
        "--values-json", "v", "--report-json", "r", "--rules-path", "rp", "--key-path", "k", "--subject", "01",
        "--jobs", "3", "--vocabulary", "--subject-values", "a.json", "b.json",
    ])
    assert deid.jobs == 3 and deid.vocabulary == [] and deid.subject_values == [Path("a.json"), Path("b.json")]


@pytest.mark.parametrize("bad", [["--applyto", "maybe"], ["--exempt", "{not json"], []])
def test_a_bad_or_missing_option_is_a_usage_error(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--log", "x", "--in-dir", "i", "--out-bids", "o", "--status-json", "s", "--records-json", "r"]
    with pytest.raises(SystemExit) as stop:
        step_parser("deface").parse_args(base + bad)
    assert stop.value.code == 2
    assert re.search(r"--applyto|--exempt|--pictures-dir", capsys.readouterr().err)


def test_harvest_step_writes_the_values_and_its_log(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    save_dicom(mr_instance("1.2.3", "1.2.3.4", 1, "PX4417", 1), inbox / "visit" / "a.dcm")
    files = tmp_path / "files.txt"
    files.write_text("visit/a.dcm\n", encoding="utf-8")
    values_json, log = tmp_path / "values.json", tmp_path / "logs" / "harvest.log"
    count = run_step("harvest", ["--log", str(log), "--files-txt", str(files), "--inbox", str(inbox),
                                 "--values-json", str(values_json)])
    values = load_values(values_json)
    assert count == len(values) and {"PX4417", "DOE^JOHN"} <= {v.value for v in values}
    assert "harvested" in log.read_text(encoding="utf-8")


def test_a_failing_step_exits_1_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    """As a job: the terminal gets one line pointing at the log; the log has the reason."""
    log = tmp_path / "qc.log"
    upstream = tmp_path / "upstream.json"
    upstream.write_text("{not json", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "bidsafe", "step", "qc", "--log", str(log), "--in-bids", str(tmp_path / "none"),
         "--out-dir", str(tmp_path / "qc"), "--status-json", str(tmp_path / "status.json"),
         "--upstream-status", str(upstream), "--subject", "01", "--session", "01"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "log" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "JSONDecodeError" in result.stderr
    assert "ERROR" in log.read_text(encoding="utf-8")
    assert not (tmp_path / "status.json").exists()


def test_jobs_find_the_bidsafe_of_the_workflow_interpreter_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    put_interpreter_first_on_path()
    put_interpreter_first_on_path()  # parsed again: not added twice
    folders = os.environ["PATH"].split(os.pathsep)
    assert folders == [str(Path(sys.executable).parent), "/usr/bin", "/bin"]
    assert (Path(folders[0]) / "bidsafe").is_file()
