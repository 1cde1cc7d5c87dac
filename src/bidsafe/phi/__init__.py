"""What counts as personal data: the one vocabulary used by de-identification, scrub and the leak scan.

Harvest every personal value a raw DICOM file carries (names, IDs, dates, addresses, phone numbers,
institutions, device identity, identifying free text, instance UIDs), whatever the VR it was stored with, then
search for each value the ways people write it (`PersonalValues.find` / `redact`, and the byte cleaner in
`bidsafe.deid.textclean`): names transliterated and in any script, dates in every common written form, IDs
without separators or leading zeros, each with edge rules that keep ordinary words intact. `renderings()` keeps
the classic short list of forms (pseudonym checks). This is the cleaner's matching: the leak gate must build its
own. Values never leave the private area: nothing here prints them.

Modules (data flows down the list): `harvest` (the header walk, `harvest_files`), `privateblocks` (identity
private blocks), `dicomtext` (element text and VR), `matching` (`PersonalValues`, `SearchIndex`), `forms`
(written forms and edge rules), `value` (`PersonalValue`, the constants).
"""

from bidsafe.phi.forms import id_core
from bidsafe.phi.harvest import IDENTITY_KEYWORDS, harvest_dataset, harvest_files, quiet_pydicom
from bidsafe.phi.matching import PersonalValues, SearchIndex, load_values, merge_spans, save_values
from bidsafe.phi.privateblocks import IDENTITY_PRIVATE_CREATORS, IDENTITY_PRIVATE_GROUPS, harvest_private_identity
from bidsafe.phi.value import DICOM_ROOT_UID, MIN_NEEDLE_LENGTH, PLACEHOLDERS, PersonalValue

__all__ = [
    "DICOM_ROOT_UID",
    "IDENTITY_KEYWORDS",
    "IDENTITY_PRIVATE_CREATORS",
    "IDENTITY_PRIVATE_GROUPS",
    "MIN_NEEDLE_LENGTH",
    "PLACEHOLDERS",
    "PersonalValue",
    "PersonalValues",
    "SearchIndex",
    "harvest_dataset",
    "harvest_files",
    "harvest_private_identity",
    "id_core",
    "load_values",
    "merge_spans",
    "quiet_pydicom",
    "save_values",
]
