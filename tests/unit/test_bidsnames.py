"""BIDS names come from the official BIDS schema (bidsschematools); bidsafe's labels and the sub-/ses- pair of a
path are parsed in one place."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from bidsafe import bidsnames
from bidsafe.errors import ConfigError


def test_entities_datatypes_and_suffixes_are_the_schemas():
    from bidsschematools.schema import load_schema

    schema = load_schema()
    order = bidsnames.entity_order()
    assert order[:3] == ("sub", "tpl", "ses") and order.index("task") < order.index("acq") < order.index("run")
    assert len(order) == len(schema.rules.entities)
    assert {"anat", "func", "dwi", "fmap", "perf"} <= bidsnames.datatypes() and "swi" not in bidsnames.datatypes()
    assert {"T1w", "bold", "dwi", "epi", "angio", "UNIT1", "T1map"} <= bidsnames.suffixes()
    assert "T1W" not in bidsnames.suffixes()
    # the weighted anatomical images (QC's CNR), not the quantitative maps
    assert {"T1w", "T2w", "FLAIR", "PDw", "T2starw", "angio"} <= bidsnames.structural_suffixes()
    assert not {"T1map", "UNIT1", "bold"} & bidsnames.structural_suffixes()
    assert bidsnames.NIFTI_EXTENSIONS == (".nii.gz", ".nii")


@pytest.mark.parametrize(("name", "suffix"), [
    ("sub-1_ses-1_run-1_T1w.nii.gz", "T1w"),
    ("sub-1_ses-1_T2w.nii", "T2w"),
    (Path("a_b/sub-1_ses-1_bold.nii.gz"), "bold"),
    ("derivatives/x_y/sub-1_dwi.nii.gz", "dwi"),  # folders' underscores are not the file's
    ("sub-1_ses-1_T1w.json", None),
])
def test_image_suffix(name, suffix):
    assert bidsnames.image_suffix(name) == suffix


def test_labels_are_letters_and_digits_only():
    assert bidsnames.is_label("a7k2") and bidsnames.is_label("01")
    for bad in ("", None, "a-b", "a+b", "a_b", "ä1", "1\n"):
        assert not bidsnames.is_label(bad), bad


def test_the_session_pair_of_a_path():
    assert bidsnames.session_of("/w/status/deid/sub-1/ses-2/status.json") == ("1", "2")
    assert bidsnames.session_of(PurePosixPath("sub-a/ses-b")) == ("a", "b")
    assert bidsnames.session_of("/w/sub-1/anat/x.nii") is None
    assert bidsnames.from_session("/w/deface/sub-1/ses-2/records.json") == "sub-1/ses-2/records.json"
    assert bidsnames.from_session("/w/records.json") is None


def test_a_suffix_stated_as_policy_in_code_must_be_a_bids_suffix():
    assert bidsnames.known_suffix("T1w") == "T1w"
    with pytest.raises(ConfigError, match="not a suffix of the BIDS schema"):
        bidsnames.known_suffix("MPRAGE")
    assert bidsnames.unknown_suffixes(["T1w", "MPRAGE", "t1w", "T1w"]) == ["MPRAGE", "t1w"]


def test_scrub_accepts_the_schemas_datatypes_and_entities_only():
    from bidsafe.errors import GuardError
    from bidsafe.scrub import check_bids_path

    def nobody(part: str) -> bool:
        return False

    for ok in ("perf/sub-1_ses-2_acq-x_asl.nii.gz", "anat/sub-1_ses-2_inv-1_part-mag_MP2RAGE.nii.gz",
               "func/sub-1_ses-2_task-rest_dir-AP_run-1_bold.json"):
        check_bids_path(Path("sub-1/ses-2") / ok, "1", "2", nobody)
    for bad, why in (("swi/sub-1_ses-2_T2starw.nii.gz", "not a BIDS datatype"),
                     ("anat/sub-1_ses-2_foo-1_T1w.nii.gz", "unknown or repeated BIDS entity"),
                     ("anat/sub-1_ses-2_run-1_run-2_T1w.nii.gz", "unknown or repeated BIDS entity")):
        with pytest.raises(GuardError, match=why):
            check_bids_path(Path("sub-1/ses-2") / bad, "1", "2", nobody)
