"""The synthetic project of the release tests: a work area of defaced, scrubbed sessions (real NIfTI files,
records, QC folders), the private sessions table and participants folder, assembled and gated by the release
modules themselves; plus a snapshot of a release folder to compare before and after."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from bidsafe.phi import PersonalValue, PersonalValues
from bidsafe.pseudonymise.sessionlists import INCLUDED_NO, INCLUDED_YES, SESSIONS_COLUMNS
from bidsafe.release import gates as gates_mod
from bidsafe.release.assemble import SessionInput, assemble_release
from bidsafe.release.gates import LEAK_SCAN, VALIDATOR, GateResult, gate_consent, gate_deface, staging_fingerprint

PROFILE = "basic-mr"
VERSIONS = {"bidsafe": "0.1.0", "dcm2niix": "v1.0.20240202", "dcm2bids": "3.3.0", "pydicom": "3.0.1"}
# Fake personal values harvested "from the raw headers" (never real people).
PLANTED_NAME = "Quintavalle^Berenike"


def module_available(name: str) -> bool:
    """Whether `name` imports (the validator and leak-scan gates are tested only where they do)."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


HAVE_VALIDATE = module_available("bidsafe.validate")
HAVE_LEAKSCAN = module_available("bidsafe.release.leakscan")


def file_sha256(path: Path) -> str:
    """The file's SHA-256 as hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_nifti(path: Path, shape: tuple[int, ...], seed: int) -> None:
    """A random int16 NIfTI image of `shape` at 2 mm (TR 2 s when 4-D), parent folders made."""
    rng = np.random.default_rng(seed)
    img = nib.Nifti1Image(rng.integers(0, 1000, size=shape, dtype=np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    if len(shape) == 4:
        img.header["pixdim"][4] = 2.0
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def write_json(path: Path, obj: object) -> None:
    """`obj` as indented JSON, parent folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def make_session(work: Path, subject: str, session: str, seed: int) -> tuple[SessionInput, Path, Path]:
    """A defaced, scrubbed session tree (T1w + BOLD), its deface records file and its QC folder."""
    bids = work / "deface" / f"sub-{subject}" / f"ses-{session}" / "bids"
    ses = bids / f"sub-{subject}" / f"ses-{session}"
    stem = f"sub-{subject}_ses-{session}"
    t1 = ses / "anat" / f"{stem}_T1w.nii.gz"
    write_nifti(t1, (8, 8, 8), seed)
    write_json(t1.with_name(f"{stem}_T1w.json"), {"RepetitionTime": 2.3, "EchoTime": 0.003, "FlipAngle": 9})
    bold = ses / "func" / f"{stem}_task-rest_bold.nii.gz"
    write_nifti(bold, (6, 6, 4, 5), seed + 100)
    write_json(bold.with_name(f"{stem}_task-rest_bold.json"), {"RepetitionTime": 2.0, "TaskName": "rest"})
    (ses / f"{stem}_scans.tsv").write_text(
        f"filename\tacq_time\nanat/{stem}_T1w.nii.gz\t2000-01-01T10:00:00\n"
        f"func/{stem}_task-rest_bold.nii.gz\t2000-01-01T10:10:00\n",
        encoding="utf-8",
    )
    # dcm2bids-scaffold leftovers beside the session: must never reach the release
    (bids / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\nsub-03\n", encoding="utf-8")
    (bids / "tmp_dcm2bids").mkdir()
    (bids / "tmp_dcm2bids" / "log.txt").write_text("input /inbox/Quintavalle_Berenike\n", encoding="utf-8")
    records = work / "deface" / f"sub-{subject}" / f"ses-{session}" / "records.json"
    write_json(records, [{"path": t1.relative_to(bids).as_posix(), "sha256": file_sha256(t1), "engine": "test"}])
    qc = work / "qc" / f"sub-{subject}" / f"ses-{session}"
    qc.mkdir(parents=True)
    (qc / f"{stem}_desc-qc_metrics.tsv").write_text(f"image\tsnr\n{stem}_T1w.nii.gz\t{10 + seed}.5\n", encoding="utf-8")
    return SessionInput(subject, session, bids), records, qc


class Project:
    """A work area with sessions, a participants folder and a private sessions table."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / "work"
        self.private = root / "private"
        self.release_dir = root / "release"
        self.staging = self.work / "staging" / "release"
        self.participants = self.work / "pseudonymise"
        self.sessions: list[SessionInput] = []
        self.records: list[Path] = []
        self.qc: list[Path] = []
        self.table_rows: list[tuple[str, str, str, str]] = []
        self.config: dict[str, object] | None = None  # the release config of the last assemble

    def add(self, subject: str, session: str, seed: int, included: bool = True, reason: str = "") -> None:
        """A session tree for sub-`subject`/ses-`session`, listed as included (or withheld with `reason`)."""
        si, records, qc = make_session(self.work, subject, session, seed)
        if included:
            self.sessions.append(si)
            self.records.append(records)
        self.qc.append(qc)  # QC exists for every session; assemble must only take the included ones
        self.table_rows.append((subject, session, INCLUDED_YES if included else INCLUDED_NO, reason))

    def write_tables(self) -> None:
        """The private sessions table and the participants folder, as the pseudonymise stage writes them."""
        self.private.mkdir(exist_ok=True)
        lines = ["\t".join(SESSIONS_COLUMNS)]  # as the pseudonymise stage writes it
        lines += [
            f"{s}\t{t}\t1.2.826.0.1.3680043.2.{i}\t{inc}\t{r}\t1" for i, (s, t, inc, r) in enumerate(self.table_rows)
        ]
        (self.private / "sessions.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        p = self.participants
        p.mkdir(parents=True, exist_ok=True)
        subjects = sorted({s for s, *_ in self.table_rows})
        rows = "".join(f"sub-{s}\t{'F' if i % 2 else 'M'}\t{30 + i}\n" for i, s in enumerate(subjects))
        (p / "participants.tsv").write_text("participant_id\tsex\tage\n" + rows, encoding="utf-8")
        write_json(p / "participants.json",
                   {"sex": {"Description": "sex"}, "age": {"Description": "age", "Units": "year"}})
        for s in subjects:
            sessions = [t for s2, t, *_ in self.table_rows if s2 == s]
            text = "session_id\tage\n" + "".join(f"ses-{t}\t{30 + j}\n" for j, t in enumerate(sessions))
            (p / f"sub-{s}").mkdir(exist_ok=True)
            (p / f"sub-{s}" / f"sub-{s}_sessions.tsv").write_text(text, encoding="utf-8")
            # private-looking lists the pseudonymise stage keeps in its work folder: never copied
            (p / f"sub-{s}" / "files.txt").write_text("Quintavalle_Berenike/IM0001.dcm\n", encoding="utf-8")

    @property
    def sessions_tsv(self) -> Path:
        """The private sessions table."""
        return self.private / "sessions.tsv"

    def assemble(self, **extra: object) -> Path:
        """The staging tree assembled from the included sessions; `extra` adds release config keys."""
        # not config keys: the rule profile to record (`profile_override`) and why sessions left (`withheld`)
        profile = str(extra.pop("profile_override", PROFILE))
        withheld = extra.pop("withheld", None)
        config = {
            "name": "bidsafe test release",
            "authors": ["A. Author", "B. Author"],
            "how_to_acknowledge": "Cite the test.",
            "funding": ["Grant 1"],
            "ethics_approvals": ["Ethics board 42"],
            "audience": "public",
            **extra,
        }
        self.config = config  # publish writes CITATION.cff/datacite.json anew from it when it renumbers
        return assemble_release(
            self.staging,
            sessions=self.sessions,
            participants_dir=self.participants,
            qc_dirs=self.qc,
            config=config,
            versions=VERSIONS,
            release_dir=self.release_dir,
            profile=profile,
            withheld=withheld,  # type: ignore[arg-type]
        )

    def values(self) -> PersonalValues:
        """The planted personal values the leak-scan gate searches for."""
        return PersonalValues(
            [
                PersonalValue("name", "PatientName", PLANTED_NAME),
                PersonalValue("id", "PatientID", "PX7731904"),
                PersonalValue("date", "PatientBirthDate", "19610423"),
            ]
        )

    def gate_results(self, fast: bool = False) -> list[GateResult]:
        """Real deface and consent gates; validator and leak scan real when importable, else stand-ins.

        `fast`: stand-ins for those two even when importable, for tests about publish's file operations
        (the validator costs ~1 s per run on a shared machine).
        """
        results = [
            gate_deface(self.staging, self.records),
            gate_consent(self.staging, self.sessions_tsv),
        ]
        fingerprint = staging_fingerprint(self.staging)
        if HAVE_VALIDATE and not fast:
            results.append(gates_mod.gate_validator(self.staging, "deno"))
        else:
            results.append(GateResult(VALIDATOR, True, "stand-in", {}, fingerprint))
        if HAVE_LEAKSCAN and not fast:
            results.append(gates_mod.gate_leak_scan(self.staging, self.values()))
        else:
            results.append(GateResult(LEAK_SCAN, True, "stand-in", {}, fingerprint))
        return results


def snapshot(root: Path) -> dict[str, object]:
    """Everything observable about a release folder: names, link targets, file hashes."""
    if not root.exists():
        return {}
    state: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                state[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                state[rel] = file_sha256(path)
            else:
                state[rel] = "dir"
    return state
