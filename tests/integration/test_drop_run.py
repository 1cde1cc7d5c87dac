"""Issue 12 items 3 and 4 end to end, on the smallest demo (1 subject x 1 session): a study copied into the drop
folder is handed to the inbox by `bidsafe watch-drop --once`, and a scheduled `bidsafe run` publishes it; a second
`bidsafe run` started while the first works exits 75 and changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bidsafe.demo import generate
from bidsafe.runlock import SCHEDULED_RUN_LOCK, RunInProgress, scheduled_run_lock

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def bidsafe(root: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "bidsafe.cli", *args], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def lock_is_held(private_dir: Path) -> bool:
    if not (private_dir / SCHEDULED_RUN_LOCK).exists():
        return False
    try:
        with scheduled_run_lock(private_dir):
            return False
    except RunInProgress:
        return True


def test_a_dropped_study_is_published_by_a_scheduled_run(tmp_path: Path) -> None:
    root = tmp_path
    sessions = generate(root / "drop", subjects=1, sessions=1, seed=5)
    (root / "consent.tsv").write_text(f"patient_id\tconsent\tconsent_form_id\n{sessions[0].patient_id}\tpublic\t"
                                      "CF-0001\n", encoding="utf-8")
    (root / "inbox").mkdir()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    config.update(inbox="inbox", private_dir="private", work_dir="work", release_dir="release",
                  consent="consent.tsv", demographics=None)
    config["release"]["k_anonymity"] = 1
    config["drop"] = {"folder": "drop", "quiet_seconds": 0}  # ready at the first look: the copy is complete
    (root / "site.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    images = {p.relative_to(root / "drop") for p in (root / "drop").rglob("*") if p.is_file()}

    look = bidsafe(root, "watch-drop", "--configfile", "site.yaml", "--once")
    out, err = look.communicate(timeout=600)
    assert look.returncode == 0, err
    (part,) = (root / "inbox").glob("*/part-001")
    assert f"{part.parent.name} as part-001" in err and sessions[0].patient_id not in err
    left = {p.relative_to(root / "drop") for p in (root / "drop").rglob("*") if p.is_file()}
    assert left and left < images  # the junk the demo plants stays; every image went

    first = bidsafe(root, "run", "--configfile", "site.yaml", "--cores", "2")
    try:
        deadline = time.monotonic() + 120
        while not lock_is_held(root / "private") and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        second = bidsafe(root, "run", "--configfile", "site.yaml", "--cores", "1")
        _, second_err = second.communicate(timeout=120)
        assert second.returncode == 75, second_err
        assert "another bidsafe run on this site is in progress; nothing was done" in second_err
        _, first_err = first.communicate(timeout=3000)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, first_err[-4000:]
    assert "published release/v1" in first_err
    assert [p.parent.name for p in (root / "release" / "v1").glob("sub-*/ses-*")] != []
    assert sorted(p.name for p in (root / "release").iterdir() if not p.name.startswith(".")) == ["latest", "v1"]
