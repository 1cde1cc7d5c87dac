"""The shipped deployment files (issue 12 item 4): systemd units that systemd accepts, with the keys a site relies
on, and commands (units and crontab) that bidsafe's own command line accepts. Nothing is installed or started."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bidsafe.cli import build_parser

from helpers.cli_parsers import subcommand_parsers

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = DEPLOY / "systemd"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)  # strict: a repeated key is an error
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((UNITS / name).read_text(encoding="utf-8"), source=name)
    return parser


def bidsafe_argv(command: str) -> list[str]:
    """The arguments after the `bidsafe` executable in a command line (up to a shell redirection)."""
    words = shlex.split(command)
    start = next(i for i, w in enumerate(words) if w == "bidsafe" or w.endswith("/bin/bidsafe"))
    argv = []
    for word in words[start + 1:]:
        if word.startswith((">", "2>", "|", ";", "&")):
            break
        argv.append(word)
    return argv


def check_command(argv: list[str]) -> str:
    """bidsafe's parser accepts the command (SystemExit otherwise); returns the subcommand."""
    args = build_parser().parse_args(argv)
    assert "--configfile" in argv
    return args.command


def test_every_unit_has_the_keys_a_site_relies_on() -> None:
    names = sorted(p.name for p in UNITS.iterdir())
    assert names == ["bidsafe-receive.service", "bidsafe-run.service", "bidsafe-run.timer",
                     "bidsafe-watch-drop.service", "bidsafe-watch-drop.timer"]
    for name in names:
        parsed = unit(name)
        assert parsed["Unit"]["Description"], name
        if name.endswith(".timer"):
            timer = parsed["Timer"]
            assert timer["OnCalendar"] and timer["Persistent"] == "true", name
            assert parsed["Install"]["WantedBy"] == "timers.target"
            assert (UNITS / name.replace(".timer", ".service")).is_file()  # the service it starts
            continue
        service = parsed["Service"]
        assert service["User"] == service["Group"] == "bidsafe", name  # a dedicated user, never root
        assert service["WorkingDirectory"] and service["ProtectSystem"] == "strict", name
        assert service["ReadWritePaths"].split(), name


def test_receiver_restarts_on_failure_and_writes_only_inbox_and_private() -> None:
    service = unit("bidsafe-receive.service")["Service"]
    assert service["Type"] == "simple" and service["Restart"] == "on-failure"
    assert service["UMask"] == "0077"
    assert sorted(service["ReadWritePaths"].split()) == ["/srv/bidsafe/inbox", "/srv/bidsafe/private"]
    argv = bidsafe_argv(service["ExecStart"])
    assert argv[:3] == ["receive", "--configfile", "/etc/bidsafe/site.yaml"]
    if "receive" in subcommand_parsers():  # registered by the receiver's branch; parsed like the others once merged
        assert check_command(argv) == "receive"
    assert unit("bidsafe-receive.service")["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize(("name", "command"), [("bidsafe-run.service", "run"),
                                               ("bidsafe-watch-drop.service", "watch-drop")])
def test_scheduled_services_are_oneshot_and_take_75_as_success(name: str, command: str) -> None:
    service = unit(name)["Service"]
    assert service["Type"] == "oneshot" and service["SuccessExitStatus"] == "75"
    assert service["TimeoutStartSec"] == "infinity"
    assert check_command(bidsafe_argv(service["ExecStart"])) == command
    assert "Install" not in unit(name)  # started by its timer, never at boot by itself


def test_crontab_lines_are_valid_bidsafe_commands() -> None:
    lines = [line for line in (DEPLOY / "crontab").read_text().splitlines() if line.strip()
             and not line.lstrip().startswith("#")]
    commands = []
    for line in lines:
        fields = line.split(None, 5)
        assert len(fields) == 6 and all(f.replace("*", "").replace("/", "").isdigit() or f == "*"
                                        for f in fields[:5]), line
        commands.append(check_command(bidsafe_argv(fields[5])))
    assert commands == ["run", "watch-drop"]
    assert "--once" in lines[1]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    """`systemd-analyze verify` prints (and ignores) unknown keys and bad values: its output must be empty. The
    installed path of bidsafe is replaced by this one, which exists (verify checks that ExecStart is executable)."""
    here = shutil.which("bidsafe", path=str(Path(sys.executable).parent)) or shutil.which("bidsafe")
    assert here is not None
    for source in UNITS.iterdir():
        text = source.read_text().replace("/opt/bidsafe/venv/bin/bidsafe", here)
        (tmp_path / source.name).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(map(str, tmp_path.iterdir()))],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
