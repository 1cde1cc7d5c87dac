"""Pseudonyms and the linkage table: stable labels, no resemblance to identifiers, permissions, locking,
missing keys, session order, and the stage's private and released outputs."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.pseudonymise.consent import load_registry
from bidsafe.pseudonymise.linkage import (
    LINKAGE_FILENAME,
    LinkageRow,
    StudyIdentity,
    assign_labels,
    hmac_subject_label,
    new_subject_label,
    read_linkage,
    shares_identifier,
)
from bidsafe.pseudonymise.sessionlists import all_sessions, included_sessions
from bidsafe.pseudonymise.stage import run_pseudonymise
from bidsafe.pseudonymise.studies import _identifiers

from helpers.pseudonym_data import (
    FakeSession,
    append_index,
    concurrent_worker,
    config,
    write_index,
    write_registry,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


class Site:
    """An inbox, its index, a registry, a private area and an output folder in one temp folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.index = root / "private_index.tsv"
        self.private = root / "private"
        self.out = root / "work" / "pseudonymise"
        self.registry = root / "consent.tsv"
        self.sessions: dict[str, FakeSession] = {}

    def add(self, *sessions: FakeSession) -> None:
        self.sessions.update(write_index(self.index, self.inbox, sessions))

    def consent(self, rows: list[dict[str, str]]) -> None:
        write_registry(self.registry, rows)

    def run(self, **overrides: object):
        return run_pseudonymise(self.index, self.inbox, self.private, self.out, config(self.registry, **overrides))

    def linkage(self) -> list[LinkageRow]:
        return read_linkage(self.private / LINKAGE_FILENAME)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    site = Site(tmp_path)
    site.add(
        FakeSession("MRN-4471", "QUILLFEATHER^MARISOL", "20230310", "19800417", "F", study_id="S100"),
        FakeSession("MRN-4471", "QUILLFEATHER^MARISOL", "20220105", "19800417", "F", study_id="S101"),
        FakeSession("MRN-9920", "VOSKUIJLEN^TAMSIN", "20230601", "19751130", "M", study_id="S102"),
    )
    site.consent([
        {"patient_id": "MRN-4471", "consent": "public", "consent_form_id": "CF-77", "study_id": "STUDY-A"},
        {"patient_id": "MRN-9920", "consent": "none", "consent_form_id": "CF-78", "study_id": "STUDY-B"},
    ])
    return site


def _by_patient(site: Site) -> dict[str, list[LinkageRow]]:
    out: dict[str, list[LinkageRow]] = {}
    for row in site.linkage():
        out.setdefault(row.patient_id, []).append(row)
    return out


def test_sessions_are_labelled_by_date_and_gated_by_consent(site: Site):
    result = site.run()
    by_patient = _by_patient(site)
    marisol = sorted(by_patient["MRN-4471"], key=lambda r: r.session)
    assert [r.session for r in marisol] == ["01", "02"]
    dates = {uid: s.study_date for uid, s in site.sessions.items()}
    assert [dates[r.study_uid] for r in marisol] == ["20220105", "20230310"]  # ses-01 is the earlier scan
    assert marisol[0].study_id == "STUDY-A" and marisol[0].consent_form_id == "CF-77"
    (tamsin,) = by_patient["MRN-9920"]
    subject = marisol[0].subject
    assert [(d.subject, d.session, d.included, d.reason) for d in result.decisions] == sorted([
        (subject, "01", True, ""), (subject, "02", True, ""), (tamsin.subject, "01", False, "consent:none"),
    ])
    sessions_tsv = site.private / "pseudonymise" / "sessions.tsv"
    assert included_sessions(sessions_tsv) == [(subject, "01"), (subject, "02")]
    assert {(d.subject, d.included, d.reason) for d in all_sessions(sessions_tsv)} == {
        (subject, True, ""), (tamsin.subject, False, "consent:none")
    }
    with open(sessions_tsv, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert {r["n_files"] for r in rows} == {"2"}
    files = (site.private / "sessions" / f"sub-{subject}" / "ses-01" / "files.txt").read_text().splitlines()
    expected = sorted(p for p in (q.relative_to(site.inbox).as_posix() for q in site.inbox.rglob("*.dcm"))
                      if "/20220105/" in p)
    assert files == expected and len(files) == 2
    withheld_list = site.private / "sessions" / f"sub-{tamsin.subject}" / "ses-01" / "files.txt"
    assert len(withheld_list.read_text().splitlines()) == 2  # listed privately, never processed
    summary = json.loads((site.out / "summary.json").read_text())
    assert summary["counts"] == {"sessions": 3, "included_sessions": 2, "withheld_sessions": 1,
                                 "released_participants": 1}
    assert {"subject": tamsin.subject, "session": "01", "included": False, "reason": "consent:none"} in \
        summary["sessions"]


def test_outputs_outside_private_carry_no_identifier(site: Site):
    site.run()
    secrets = {"MRN-4471", "MRN-9920", "4471", "9920", "QUILLFEATHER", "MARISOL", "VOSKUIJLEN", "TAMSIN",
               "STUDY-A", "STUDY-B", "CF-77", "CF-78", "19800417", "1980", "20230310", "2023"}
    secrets |= set(site.sessions)  # study UIDs
    for path in site.out.rglob("*"):
        text = path.relative_to(site.root).as_posix() + (path.read_text() if path.is_file() else "")
        for secret in secrets:
            assert secret.lower() not in text.lower(), f"{secret} found in {path.name}"
    assert not list(site.out.rglob(LINKAGE_FILENAME))


def test_permissions_and_separation(site: Site):
    site.run()
    assert oct(site.private.stat().st_mode & 0o777) == "0o700"
    for name in ("secret.key", LINKAGE_FILENAME):
        assert oct((site.private / name).stat().st_mode & 0o777) == "0o600"
    for path in site.private.rglob("*"):
        assert path.stat().st_mode & 0o077 == 0, f"{path.relative_to(site.private)} is readable by others"
    with pytest.raises(ConfigError, match="overlap"):
        run_pseudonymise(site.index, site.inbox, site.private, site.private / "out", config(site.registry))
    with pytest.raises(ConfigError, match="overlap"):
        run_pseudonymise(site.index, site.inbox, site.out / "private", site.out, config(site.registry))


def test_labels_are_stable_across_runs_and_unchanged_files_keep_their_mtime(site: Site):
    first = site.run()
    table = (site.private / LINKAGE_FILENAME).read_text()
    files = sorted((site.private / "sessions").rglob("files.txt")) + [site.out / "participants.tsv"]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    second = site.run()
    assert second.decisions == first.decisions
    assert (site.private / LINKAGE_FILENAME).read_text() == table
    assert {p: p.stat().st_mtime_ns for p in files} == stamps


def test_labels_are_stable_in_a_fresh_process(site: Site):
    first = site.run()
    code = (
        "import json, sys; from pathlib import Path;"
        "from helpers.pseudonym_data import config; from bidsafe.pseudonymise.stage import run_pseudonymise;"
        "r = run_pseudonymise(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]),"
        " config(Path(sys.argv[5])));"
        "print(json.dumps([[d.subject, d.session, d.included, d.reason] for d in r.decisions]))"
    )
    out = site.root / "other-out"
    # the fresh process finds the test helpers as pytest does (pyproject's `pythonpath`)
    tests_dir = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", code, str(site.index), str(site.inbox), str(site.private),
         str(out), str(site.registry)],
        capture_output=True, text=True, check=True, env=env,
    )
    assert json.loads(done.stdout) == [[d.subject, d.session, d.included, d.reason] for d in first.decisions]
    assert (out / "participants.tsv").read_text() == (site.out / "participants.tsv").read_text()


def test_same_key_and_table_give_the_same_labels_on_another_machine(site: Site, tmp_path: Path):
    first = site.run()
    # Another machine: same inbox and index, a copy of the key and linkage table, a fresh output folder.
    other = tmp_path / "elsewhere" / "private"
    other.mkdir(parents=True)
    for name in ("secret.key", LINKAGE_FILENAME):
        (other / name).write_bytes((site.private / name).read_bytes())
    again = run_pseudonymise(site.index, site.inbox, other, tmp_path / "elsewhere" / "out", config(site.registry))
    assert again.decisions == first.decisions


def test_hmac_labels_derive_from_the_key_not_from_the_identity_alone():
    identities = [f"patient:MRN-{n}" for n in range(50)]
    labels = [hmac_subject_label(KEY, i) for i in identities]
    assert len(set(labels)) == 50
    assert all(len(label) == 8 and label.isalnum() and label == label.lower() for label in labels)
    assert all(hmac_subject_label(OTHER_KEY, i) != label for i, label in zip(identities, labels, strict=True))
    assert hmac_subject_label(KEY, identities[0]) == labels[0]  # deterministic


identifier = st.text(alphabet=st.characters(codec="ascii", categories=("L", "N", "P", "Zs")), min_size=1,
                     max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), patient_id=identifier, name=identifier, study_id=identifier, form_id=identifier,
       scheme=st.sampled_from(["hmac", "sequential"]), start=st.integers(min_value=1, max_value=2000))
def test_labels_share_no_three_characters_with_any_identifier(data, patient_id, name, study_id, form_id, scheme,
                                                               start):
    identity = f"study:{study_id}"
    # Plant pieces of the labels this participant would otherwise get into its identifiers, so the test
    # exercises the skipping and does not depend on random text happening to collide.
    natural = ([hmac_subject_label(KEY, identity, attempt) for attempt in range(3)] if scheme == "hmac"
               else [f"{start + attempt:03d}" for attempt in range(3)])
    pieces = data.draw(st.lists(st.tuples(st.sampled_from(natural), st.integers(0, 5), st.integers(3, 8)),
                                max_size=3))
    planted = [label[i : i + n] for label, i, n in pieces if len(label[i : i + n]) >= 3]
    patient_id = patient_id + "-".join(p.upper() for p in planted)
    identifiers = {patient_id, name, study_id, form_id}
    label = new_subject_label(KEY, identity, identifiers, used=set(), scheme=scheme, next_number=start)
    assert label.isalnum() and len(label) >= 3
    for value in identifiers:
        lowered = value.lower()
        for i in range(len(lowered) - 2):
            assert lowered[i : i + 3] not in label, "label contains part of an identifier"
    assert not shares_identifier(label, identifiers)


def test_label_resembling_an_identifier_is_skipped():
    # The first sequential label would be 001, which is part of the patient's ID: it is skipped.
    assert new_subject_label(KEY, "patient:X001", {"X001"}, set(), "sequential", 1) == "002"
    first = hmac_subject_label(KEY, "patient:P")
    assert new_subject_label(KEY, "patient:P", {first[2:7].upper()}, set(), "hmac") != first
    assert new_subject_label(KEY, "patient:P", set(), {first}, "hmac") != first  # collision with a used label


def test_sequential_scheme_numbers_participants_by_first_scan(site: Site):
    result = site.run(pseudonyms={"scheme": "sequential"})
    by_patient = _by_patient(site)
    assert {r.subject for r in by_patient["MRN-4471"]} == {"001"}  # first scan 2022
    assert {r.subject for r in by_patient["MRN-9920"]} == {"002"}
    assert {r.scheme for r in site.linkage()} == {"sequential"}
    assert {(d.subject, d.session) for d in result.decisions} == {("001", "01"), ("001", "02"), ("002", "01")}
    site.add(FakeSession("MRN-5555", "NEWCOME^ANNA", "20200101", "19900101", "F"))
    site.run(pseudonyms={"scheme": "sequential"})
    assert {r.subject for r in _by_patient(site)["MRN-5555"]} == {"003"}  # counter continues from the table


def test_an_earlier_session_arriving_later_does_not_relabel(site: Site):
    site.run()
    before = {r.study_uid: (r.subject, r.session) for r in site.linkage()}
    site.add(FakeSession("MRN-4471", "QUILLFEATHER^MARISOL", "20190704", "19800417", "F"))
    site.run()
    after = {r.study_uid: (r.subject, r.session) for r in site.linkage()}
    assert {uid: after[uid] for uid in before} == before
    (new_uid,) = set(after) - set(before)
    subject = _by_patient(site)["MRN-4471"][0].subject
    assert after[new_uid] == (subject, "03")  # the next number, although it is the earliest scan


def test_withdrawn_participant_disappears_from_the_next_run(site: Site):
    site.run()
    subject = _by_patient(site)["MRN-4471"][0].subject
    assert f"sub-{subject}" in (site.out / "participants.tsv").read_text()
    assert (site.out / f"sub-{subject}" / f"sub-{subject}_sessions.tsv").is_file()
    site.consent([
        {"patient_id": "MRN-4471", "consent": "public", "consent_form_id": "CF-77", "withdrawn": "2024-06-30"},
        {"patient_id": "MRN-9920", "consent": "none"},
    ])
    result = site.run()
    assert all(not d.included for d in result.decisions)
    assert {d.reason for d in result.decisions if d.subject == subject} == {"consent:withdrawn"}
    assert included_sessions(site.private / "pseudonymise" / "sessions.tsv") == []
    assert (site.out / "participants.tsv").read_text() == "participant_id\tsex\tage\n"
    assert not (site.out / f"sub-{subject}").exists()
    # the linkage keeps the label, marked withdrawn (never reused, never re-added: see test_withdrawal.py)
    assert {r.subject: r.withdrawn != "" for r in site.linkage() if r.subject == subject} == {subject: True}


def test_missing_key_with_existing_table_fails_clearly_and_makes_no_new_key(site: Site):
    site.run()
    (site.private / "secret.key").unlink()
    with pytest.raises(BidsafeError, match=r"secret key is missing but linkage.tsv exists"):
        site.run()
    assert not (site.private / "secret.key").exists()


def test_damaged_linkage_table_is_an_error_without_values(site: Site):
    site.run()
    linkage = site.private / LINKAGE_FILENAME
    lines = linkage.read_text().splitlines()
    linkage.write_text("\n".join([*lines, lines[1]]) + "\n")  # the same study twice
    with pytest.raises(BidsafeError, match=r"lines 2 and 5 hold the same study") as caught:
        site.run()
    assert "MRN" not in str(caught.value)


def test_session_without_patient_id_or_with_two_is_withheld(tmp_path: Path):
    site = Site(tmp_path)
    site.add(FakeSession("", "ANON^X", "20230101"), FakeSession("MRN-1", "ONE^A", "20230102", study_uid="1.2.3.99"))
    # A second file of study 1.2.3.99 carrying another PatientID: whose consent applies is unknown.
    other = FakeSession("MRN-2", "TWO^B", "20230102", study_uid="1.2.3.99", files=1)
    site.add(other)
    site.consent([{"patient_id": "MRN-1", "consent": "public"}, {"patient_id": "MRN-2", "consent": "public"}])
    result = site.run()
    assert sorted(d.reason for d in result.decisions) == ["identity:conflicting-patient-ids",
                                                          "identity:no-patient-id"]
    assert not any(d.included for d in result.decisions)


def test_registry_joining_two_known_subjects_is_a_linkage_conflict(tmp_path: Path):
    rows = [LinkageRow("aaaa2222", "01", "1.1", "P1", "S1", "", "hmac", "t"),
            LinkageRow("bbbb3333", "01", "1.2", "P2", "", "", "hmac", "t")]
    study = StudyIdentity("1.3", "study:S1", "P2", study_ids=("S1",))
    with pytest.raises(BidsafeError, match="sub-aaaa2222, sub-bbbb3333"):
        assign_labels([study], rows, KEY, "hmac", "now")


def test_study_id_links_two_patient_ids_of_one_participant():
    rows = [LinkageRow("aaaa2222", "01", "1.1", "P1", "S1", "", "hmac", "t")]
    study = StudyIdentity("1.2", "study:S1", "P1-NEW", study_ids=("S1",), study_date="20240101")
    updated, labels = assign_labels([study], rows, KEY, "hmac", "now")
    assert labels == {"1.2": ("aaaa2222", "02")}
    assert updated[-1].patient_id == "P1-NEW" and updated[-1].first_seen == "now"


def test_later_registry_values_fill_blanks_but_never_rewrite(tmp_path: Path):
    rows = [LinkageRow("aaaa2222", "01", "1.1", "P1", "", "CF-OLD", "hmac", "t")]
    study = StudyIdentity("1.1", "study:S9", "P1", study_ids=("S9",), consent_form_ids=("CF-NEW",))
    updated, labels = assign_labels([study], rows, KEY, "hmac", "now")
    assert labels == {"1.1": ("aaaa2222", "01")}
    assert (updated[0].study_id, updated[0].consent_form_id, updated[0].first_seen) == ("S9", "CF-OLD", "t")


def test_concurrent_runs_adding_different_participants_end_consistent(tmp_path: Path):
    """Two processes add different new participants to one private area at the same moment, twice over."""
    private = tmp_path / "private"
    inbox = tmp_path / "inbox"
    indexes = []
    for group in ("A", "B"):
        index = tmp_path / f"index-{group}.tsv"
        write_index(index, inbox, [FakeSession(f"MRN-{group}{n}", f"PERSON^{group}{n}", f"2023010{n + 1}")
                                   for n in range(4)])
        indexes.append(index)
    registry = write_registry(tmp_path / "consent.tsv", [{"patient_id": f"MRN-{g}{n}", "consent": "public"}
                                                         for g in "AB" for n in range(4)])
    cfg = config(registry)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=concurrent_worker,
                               args=(barrier, str(index), str(inbox), str(private), str(tmp_path / f"out{i}"), cfg))
               for i, index in enumerate(indexes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]

    rows = read_linkage(private / LINKAGE_FILENAME)
    assert len(rows) == 8 and len({r.study_uid for r in rows}) == 8
    assert {r.patient_id for r in rows} == {f"MRN-{g}{n}" for g in "AB" for n in range(4)}
    assert len({r.subject for r in rows}) == 8  # one subject per participant, no label given twice
    # Both processes used the one key that is on disk: every label is what that key gives.
    key = bytes.fromhex((private / "secret.key").read_text().strip())
    registry_records = load_registry(cfg)
    for row in rows:
        header = pydicom.dcmread(next(inbox.rglob(f"*_{row.patient_id}/*/*.dcm")), stop_before_pixels=True)
        identifiers = _identifiers(header, [row.patient_id], registry_records.lookup(row.patient_id))
        assert row.subject == new_subject_label(key, f"patient:{row.patient_id}", identifiers, set(), "hmac")

    # A later run over everything adds nothing: the table is complete and consistent.
    union = tmp_path / "index-all.tsv"
    append_index(union, [line.split("\t") for i in indexes for line in i.read_text().splitlines()[1:]])
    table = (private / LINKAGE_FILENAME).read_text()
    result = run_pseudonymise(union, inbox, private, tmp_path / "out-all", cfg)
    assert (private / LINKAGE_FILENAME).read_text() == table
    assert len(result.decisions) == 8 and all(d.included for d in result.decisions)
    assert not list(private.glob(".*.tmp"))


def test_no_registry_withholds_everyone(site: Site):
    result = run_pseudonymise(site.index, site.inbox, site.private, site.out, config(None))
    assert {d.reason for d in result.decisions} == {"consent:no-registry"}
    summary = json.loads((site.out / "summary.json").read_text())
    assert summary["consent"] == "no-registry" and summary["counts"]["included_sessions"] == 0


def test_bad_config_is_refused_before_anything_is_written(site: Site):
    with pytest.raises(ConfigError, match="pseudonyms.scheme"):
        site.run(pseudonyms={"scheme": "md5"})
    with pytest.raises(ConfigError, match="release.audience"):
        site.run(release={"audience": "world"})
    with pytest.raises(ConfigError, match="k_anonymity_action"):
        site.run(release={"k_anonymity_action": "ignore"})
    assert not site.private.exists() and not site.out.exists()


def test_linkage_file_is_written_atomically_with_a_lock_file_only(site: Site):
    site.run()
    names = sorted(p.name for p in site.private.iterdir())
    assert names == [".linkage.lock", "linkage.tsv", "pseudonymise", "secret.key", "sessions"]
    assert os.stat(site.private / ".linkage.lock").st_mode & 0o777 == 0o600
