"""The personal-data vocabulary: harvesting from nested and private elements, renderings, redaction."""

import pytest
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset

from bidsafe.deid.textclean import FILLER, TextCleaner
from bidsafe.phi import PersonalValue, PersonalValues, harvest_dataset, harvest_private_identity


def _dataset() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Quillfeather^Marisol^Anne"
    ds.PatientID = "QX-778812"
    ds.PatientBirthDate = "19800417"
    ds.PatientTelephoneNumbers = "+44 (0)20 7946 0321"
    ds.InstitutionName = "Harrowgate Imaging Centre"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.StudyInstanceUID = "1.3.6.1.4.1.99999.1.2.3"
    ds.SeriesDescription = "T1 MPRAGE"
    request = Dataset()
    request.RequestingPhysician = "Voskuijlen^Tamsin"
    ds.RequestAttributesSequence = [request]
    block = ds.private_block(0x0029, "ACME 1.0", create=True)
    block.add_new(0x10, "PN", "Quillfeather^M")
    return ds


def test_harvest_finds_nested_private_and_uids_but_not_registered_uids():
    values = {(v.category, v.field, v.value) for v in harvest_dataset(_dataset())}
    assert ("name", "PatientName", "Quillfeather^Marisol^Anne") in values
    assert ("name", "RequestAttributesSequence>RequestingPhysician", "Voskuijlen^Tamsin") in values
    assert ("name", "(0029,1010)", "Quillfeather^M") in values
    assert ("date", "PatientBirthDate", "19800417") in values
    assert ("uid", "StudyInstanceUID", "1.3.6.1.4.1.99999.1.2.3") in values
    assert not any(v[2].startswith("1.2.840.10008.") for v in values)
    assert not any(v[1] == "SeriesDescription" for v in values)


def test_renderings_cover_name_orders_dates_and_phone_digits():
    name = PersonalValue("name", "PatientName", "Quillfeather^Marisol")
    assert {"quillfeather", "marisol", "marisol quillfeather", "quillfeather_marisol"} <= name.renderings()
    birth = PersonalValue("date", "PatientBirthDate", "19800417")
    assert {"19800417", "1980-04-17", "17.04.1980", "04/17/1980", "17 apr 1980"} <= birth.renderings()
    phone = PersonalValue("phone", "PatientTelephoneNumbers", "+44 (0)20 7946 0321")
    assert "440207946 0321".replace(" ", "") in phone.renderings()


def test_find_and_redact_are_word_bounded_and_case_insensitive():
    values = PersonalValues(harvest_dataset(_dataset()))
    text = "fMRI rest MARISOL quillfeather 1980-04-17 QX-778812 (asleep)"
    assert {v.field for v in values.find(text)} >= {"PatientName", "PatientBirthDate", "PatientID"}
    cleaned = values.redact(text)
    assert "marisol" not in cleaned.lower() and "1980" not in cleaned and "778812" not in cleaned
    assert cleaned.startswith("fMRI rest") and "asleep" in cleaned
    assert values.redact("T1 MPRAGE") == "T1 MPRAGE"


def test_round_trip_json():
    values = PersonalValues(harvest_dataset(_dataset()))
    again = PersonalValues.from_json(values.to_json())
    assert again.values == values.values


def test_placeholders_are_never_needles():
    values = PersonalValues([PersonalValue("free_text", "ImageComments", "None"),
                             PersonalValue("name", "OperatorsName", "Anonymous^Unknown")])
    assert not {"none", "anonymous", "unknown"} & set(values.needles())
    assert values.redact("ImageType NONE") == "ImageType NONE"


# --- values as people write them (issue 9, item 2) ----------------------------------------------------------
#
# One fake identity; each case plants a value in a descriptor as a technologist, a console or a converter wrote
# it, and says what must be gone. The same text is then cleaned as a same-length private byte block.

IDENTITY = [
    PersonalValue("name", "PatientName", "Müller^Jürgen"),
    PersonalValue("id", "PatientID", "0012345678"),
    PersonalValue("id", "OtherPatientIDs", "8842QX"),
    PersonalValue("date", "PatientBirthDate", "19650704"),
    PersonalValue("date", "StudyDate", "20230501"),
    PersonalValue("name", "OperatorsName", "Zqxwv^Johanna"),
    PersonalValue("name", "ReferringPhysicianName", "Smith^Ørsted"),
    PersonalValue("name", "PerformingPhysicianName", "王^小明"),
    PersonalValue("name", "PatientBirthName", "Li^Wei"),
    PersonalValue("name", "PatientMotherBirthName", "山田"),
    PersonalValue("name", "RequestingPhysician", "Иванова^Ольга"),
    PersonalValue("name", "NameOfPhysiciansReadingStudy", "Παπαδόπουλος^Γιώργος"),
    PersonalValue("name", "PhysiciansOfRecord", "כהן^דוד"),
    PersonalValue("name", "ResponsiblePerson", "김^민수"),
    PersonalValue("institution", "InstitutionName", "EPI"),
    PersonalValue("institution", "InstitutionalDepartmentName", "NIH"),
    PersonalValue("name", "ScheduledPerformingPhysicianName", "Lee^Ann"),
]

# (written text, what must not survive it)
PLANTED = [
    ("Ax DWI Mueller 12345678", ["mueller", "12345678"]),
    ("Ax DWI Müller 0012345678", ["müller", "12345678"]),
    ("DWI MULLER 00 1234 5678", ["muller", "1234", "5678"]),
    ("Juergen 04-Jul-1965", ["juergen", "jul", "1965"]),
    ("Jurgen rest", ["jurgen"]),
    ("EPI PE=AP 17.3.1971 x 4.7.1965", ["1965"]),
    ("EPI PE=AP PID 8842 QX", ["8842", "qx"]),
    ("fmri 8842_qx 8842-QX 8842qx", ["8842", "qx"]),
    ("rest 2023_05_01 1-May-2023 May 1, 2023", ["2023"]),
    ("Zqxwv2 Johanna1 Smith_J", ["zqxwv", "johanna", "smith"]),
    ("EPI_asc Ã\x98rsted2", ["ã\x98rsted"]),
    ("EPI_asc å±±ç\x94°", ["å±±ç\x94°"]),
    ("Orsted Ørsted", ["rsted"]),
    ("t1 王 scan", ["王"]),
    ("t1 王小明", ["王", "小明"]),
    ("rest Li run", [" li "]),
    ("rest LiWei Wei_Li run", ["liwei", "wei_li"]),
    ("t2 ИВАНОВА Ольга", ["иванова", "ольга"]),
    ("t2 Ivanova", ["ivanova"]),
    ("ΠΑΠΑΔΌΠΟΥΛΟΣ Giorgos", ["παπαδ", "giorgos"]),
    ("dwi כהן", ["כהן"]),
    ("dwi 김민수", ["김", "민수"]),
    ("ShanTian t1", ["shantian"]),
]

BIRTH_FORMS = [
    "19650704", "1965-07-04", "1965/07/04", "1965.07.04", "1965_07_04", "1965 07 04", "04.07.1965", "4.7.1965",
    "04/07/1965", "07/04/1965", "7/4/1965", "04-07-1965", "4-7-65", "04.07.65", "650704", "040765",
    "04-Jul-1965", "4 July 1965", "Jul 4 1965", "July 4, 1965", "04JUL1965", "1965-Jul-04", "4th July 1965",
]  # fmt: skip


@pytest.mark.parametrize(("text", "gone"), PLANTED)
def test_each_written_form_is_removed_from_a_descriptor(text, gone):
    cleaned = PersonalValues(IDENTITY).redact(text).lower()
    for needle in gone:
        assert needle not in f" {cleaned} ", f"{needle!r} survived"


@pytest.mark.parametrize(("text", "gone"), PLANTED)
def test_each_written_form_is_overwritten_in_a_private_byte_block(text, gone):
    cleaner = TextCleaner(IDENTITY)
    block = f'tProtocolName = "{text}"\nsKSpace.lBaseResolution = 256\n'.encode()
    cleaned = cleaner.clean_bytes(block)
    assert len(cleaned) == len(block)
    assert b"sKSpace.lBaseResolution = 256" in cleaned
    lowered = cleaned.decode("utf-8", "replace").lower()
    for needle in gone:
        assert needle not in lowered.replace('"', " "), f"{needle!r} survived"


@pytest.mark.parametrize("form", BIRTH_FORMS)
def test_every_common_birth_date_form_is_removed(form):
    values = PersonalValues(IDENTITY)
    assert values.redact(f"EPI rest {form} run") == "rest run"
    cleaned = TextCleaner(IDENTITY).clean_bytes(f"x {form};".encode())
    assert cleaned == b"x " + FILLER * len(form) + b";"


def test_identifiers_with_leading_zeros_added_or_dropped():
    values = PersonalValues([PersonalValue("id", "PatientID", "12345678")])
    for form in ("0012345678", "00 1234 5678", "12-345-678", "12345678"):
        assert values.redact(f"run {form} x") == "run x", form
    # a longer number that merely contains the ID is another number
    assert values.redact("run 912345678 x") == "run 912345678 x"


ORDINARY = [
    ("asleep at rest", [PersonalValue("name", "PatientName", "Lee^Ann")]),
    ("epiRT nih_ep2d_bold", [PersonalValue("institution", "InstitutionName", "EPI"),
                             PersonalValue("institution", "InstitutionName", "NIH")]),
    ("Lipid slice liver", [PersonalValue("name", "PatientName", "Li^Wei")]),
    ("T1 w mprage", [PersonalValue("name", "PatientName", "Smith^T^W")]),
    ("b 0.19800417 ref 2.19800417.4", [PersonalValue("date", "PatientBirthDate", "19800417")]),
    ("TR 1234567890", [PersonalValue("id", "PatientID", "12345678")]),
    ("AP PA rest", [PersonalValue("name", "PatientName", "Rest^Ap")]),
]


@pytest.mark.parametrize(("text", "values"), ORDINARY[:-1])
def test_ordinary_text_is_not_destroyed(text, values):
    assert PersonalValues(values).redact(text) == text
    assert TextCleaner(values).clean_bytes(text.encode()) == text.encode()


def test_a_short_name_part_goes_only_as_a_whole_token():
    values = PersonalValues(ORDINARY[-1][1])
    assert values.redact("ap PA apnea") == "PA apnea"


@pytest.mark.parametrize(
    ("charset", "codec", "name"),
    [("ISO_IR 144", "iso8859_5", "Иванова^Ольга"), ("GB18030", "gb18030", "王^小明"),
     ("ISO_IR 192", "utf-8", "Παπαδόπουλος^Γιώργος"), ("ISO_IR 100", "latin-1", "Müller^Jürgen")],
)
def test_private_bytes_are_searched_in_the_declared_character_set(charset, codec, name):
    family = name.split("^")[0]
    block = b"SEDESC " + family.upper().encode(codec) + b" fMRI\n" + family.encode(codec) + b"2\n"
    cleaner = TextCleaner([PersonalValue("name", "PatientName", name)])
    cleaned = cleaner.clean_private_value(block, convert_encodings([charset]))
    assert len(cleaned) == len(block)
    assert family.encode(codec) not in cleaned and family.upper().encode(codec) not in cleaned
    assert cleaned.startswith(b"SEDESC ") and b" fMRI\n" in cleaned


def test_pn_stored_as_lo_or_un_is_harvested():
    ds = Dataset()
    ds.add_new(0x00100010, "LO", "Quillfeather^Marisol")
    ds.add_new(0x00081050, "UN", b"Voskuijlen^Tamsin")
    found = {(v.category, v.field, v.value) for v in harvest_dataset(ds)}
    assert ("name", "PatientName", "Quillfeather^Marisol") in found
    assert ("name", "PerformingPhysicianName", "Voskuijlen^Tamsin") in found


def test_private_identity_text_is_decoded_in_its_character_set():
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 144"
    ds.private_block(0x0011, "ACME PATIENT", create=True).add_new(0x01, "OB", "Иванова^Ольга".encode("iso8859_5"))
    assert ("name", "Иванова^Ольга") in {(v.category, v.value) for v in harvest_private_identity(ds)}


def test_a_kanji_name_inside_an_iso_2022_jis_run_is_overwritten():
    cleaner = TextCleaner([PersonalValue("name", "PatientName", "山田^太郎")])
    block = "EPI 本山田様 rest".encode("iso2022_jp")  # 山田 inside a longer kanji run: no escape of its own
    cleaned = cleaner.clean_bytes(block, convert_encodings(["ISO 2022 IR 6", "ISO 2022 IR 87"]))
    assert len(cleaned) == len(block)
    assert "山田".encode("iso2022_jp")[3:-3] not in cleaned and b"EPI " in cleaned and b" rest" in cleaned
    assert "本".encode("iso2022_jp")[3:-3] in cleaned  # the neighbours stay


def test_protected_vocabulary_words_are_never_cut_for_a_namesake():
    bold = [PersonalValue("name", "PatientName", "Bold^Field")]
    assert PersonalValues(bold).redact("ep2d_bold") == "ep2d"
    assert PersonalValues(bold, protected={"BOLD", "field"}).redact("ep2d_bold gre_field_mapping") == (
        "ep2d_bold gre_field_mapping"
    )
    cleaner = TextCleaner(bold, protected={"bold"})
    assert cleaner.clean_bytes(b'"ep2d_bold" BoldField') == b'"ep2d_bold" ' + FILLER * 9


def test_an_id_is_not_found_in_a_list_of_small_numbers():
    values = [PersonalValue("id", "PatientID", "1111111")]
    array = "sCoilSelect.aulElementSelected = 1 1 1 1 1 1 1 1"
    assert PersonalValues(values).redact(array) == array
    assert TextCleaner(values).clean_bytes(array.encode()) == array.encode()
    assert PersonalValues(values).redact("id 111 1111 end") == "id end"
