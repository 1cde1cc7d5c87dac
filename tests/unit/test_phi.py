"""The personal-data vocabulary: harvesting from nested and private elements, renderings, redaction."""

from pydicom.dataset import Dataset

from bidsafe.phi import PersonalValue, PersonalValues, harvest_dataset


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
