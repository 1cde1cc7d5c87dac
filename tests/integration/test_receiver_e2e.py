"""End to end: dcmtk's storescu sends a demo session to `bidsafe receive`; a run while the study is still
arriving publishes nothing; once the study is ready a run publishes it whole, exactly once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import yaml

from bidsafe.demo import generate
from bidsafe.receiver import STORAGE_SOP_CLASSES

from helpers.loopback import STORESCU, free_port, listening, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(STORESCU).exists(), reason="dcmtk's storescu is not installed")]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def snakemake(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(root),
               "--configfile", str(root / "config.yaml"), "--cores", "2", *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=3000, check=False)


def test_a_received_study_is_published_once_and_never_in_part(tmp_path: Path):
    root = tmp_path
    (session,) = generate(root / "scanner", subjects=1, sessions=1, seed=5)
    (root / "consent.tsv").write_text(
        f"patient_id\tconsent\tconsent_form_id\n{session.patient_id}\tpublic\tCF-0001\n", encoding="utf-8")
    port = free_port()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    config.update(inbox="inbox", private_dir="private", work_dir="work", release_dir="release",
                  consent="consent.tsv", demographics=None)
    config["release"]["k_anonymity"] = 1
    series = [[f for f in s.files if pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID
               in STORAGE_SOP_CLASSES] for s in session.series]
    series = [s for s in series if s]
    assert len(series) >= 5
    descriptions = sorted({str(pydicom.dcmread(s[0], stop_before_pixels=True).SeriesDescription) for s in series})
    # a long quiet period, so the study can only become ready by the expected-series rule (all series in,
    # senders released): the run below, while it is still arriving, must see nothing of it however long it takes
    config["receiver"] = {"port": port, "allowed_callers": ["SCANNER1"], "quiet_seconds": 600,
                          "expected_series": [{"description": d} for d in descriptions]}
    (root / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (root / "inbox").mkdir()

    log = open(root / "receiver.log", "wb")  # noqa: SIM115
    receiver = subprocess.Popen([sys.executable, "-m", "bidsafe.cli", "receive", "--configfile", "config.yaml"],
                                cwd=root, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: listening(port), 20, "the receiver")

        def send(files: list[Path]) -> None:
            result = subprocess.run([STORESCU, "-aet", "SCANNER1", "-aec", "BIDSAFE", "127.0.0.1", str(port),
                                     *map(str, files)], capture_output=True, timeout=300)
            assert result.returncode == 0, result.stderr.decode(errors="replace")

        send([f for s in series[:2] for f in s])
        # a scheduled run while the study is still arriving: nothing is in the inbox, nothing is published
        snakemake(root)  # (an empty inbox stops at ingest or publishes a release without sessions)
        assert list((root / "inbox").iterdir()) == []
        assert list((root / "release").glob("*/sub-*")) == []
        send([f for s in series[2:] for f in s])
        wait_for(lambda: list((root / "inbox").glob("*/part-001/manifest.json")), 60, "the study to be ready")
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(30)
        log.close()

    result = snakemake(root)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    latest = (root / "release" / "latest").resolve()
    (session_dir,) = sorted(latest.glob("sub-*/ses-*"))
    names = {p.relative_to(session_dir).as_posix() for p in session_dir.rglob("*") if p.is_file()}
    prefix = f"{session_dir.parent.name}_{session_dir.name}"
    for expected in (f"anat/{prefix}_T1w.nii.gz", f"anat/{prefix}_T2w.nii.gz", f"dwi/{prefix}_dwi.nii.gz"):
        assert expected in names
    assert any(re.fullmatch(rf"func/{prefix}_task-\w+_bold\.nii\.gz", n) for n in names)
    assert any(n.startswith("fmap/") for n in names)
    # published exactly once: the next scheduled run has nothing to do and makes no new version
    again = snakemake(root)
    assert again.returncode == 0, again.stderr[-4000:]
    assert (root / "release" / "latest").resolve() == latest
    assert [p.parent.name for p in (root / "release").glob("v*/sub-*")] == [latest.name]
    text = (root / "receiver.log").read_text(errors="replace")
    for value in (session.patient_name, session.patient_id, session.study_instance_uid, session.family_name):
        assert value not in text
