"""Runs of the whole workflow in a throw-away site folder (1 subject x 1 demo session), for the integration tests:
the folder with its own copies of the shipped rule, mapping and allow-list files, its config, and Snakemake run
from the repository's Snakefile with this interpreter's tools first on PATH."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from bidsafe.demo import DemoSession, generate

REPO = Path(__file__).resolve().parents[2]  # tests/helpers/ -> the repository
BIN = Path(sys.executable).parent
SITE_VOCABULARY = 'kind: vocabulary\ngroups:\n  tasks:\n    reason: "site task names"\n    tokens: [fingertap]\n'


def snakemake(workdir: Path, *extra: str, configfile: str = "config.yaml") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(workdir / configfile), "--cores", "2", *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=3000, check=False)


def planned_jobs(workdir: Path, *targets: str) -> dict[str, int]:
    """The jobs a dry-run would run, by rule (from Snakemake's job stats table)."""
    result = snakemake(workdir, "-n", *targets)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout + result.stderr
    if "Job stats:" not in text:
        assert "Nothing to be done" in text, text[-3000:]
        return {}
    table = text.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)
            if m.group(1) != "total"}


def write_config(root: Path, name: str = "config.yaml", **deid: object) -> Path:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    config.update(inbox="inbox", private_dir="private", work_dir="work", release_dir="release",
                  consent="consent.tsv", demographics=None)
    config["release"]["k_anonymity"] = 1
    # copies in the run folder, so the test edits them without touching the repository
    config["deid"].update(rules="site/basic-mr.yaml", vocabulary=["site/vocabulary.yaml"], **deid)
    config["dcm2bids"]["config"] = "site/dcm2bids.json"
    config["scrub"]["allowlist"] = "site/sidecar_allowlist.yaml"
    path = root / name
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def make_run_folder(root: Path, seed: int) -> tuple[Path, list[DemoSession]]:
    sessions = generate(root / "inbox", subjects=1, sessions=1, seed=seed)
    (root / "consent.tsv").write_text(
        f"patient_id\tconsent\tconsent_form_id\n{sessions[0].patient_id}\tpublic\tCF-0001\n", encoding="utf-8"
    )
    write_site_files(root)
    write_config(root)
    return root, sessions


def write_site_files(root: Path) -> Path:
    """root/site: the site's own copies of the shipped rules, mapping and allow-list, and a site vocabulary."""
    site = root / "site"
    site.mkdir()
    shutil.copy(REPO / "config" / "deid" / "basic-mr.yaml", site / "basic-mr.yaml")
    shutil.copy(REPO / "config" / "dcm2bids.json", site / "dcm2bids.json")
    shutil.copy(REPO / "config" / "sidecar_allowlist.yaml", site / "sidecar_allowlist.yaml")
    (site / "vocabulary.yaml").write_text(SITE_VOCABULARY, encoding="utf-8")
    return site
