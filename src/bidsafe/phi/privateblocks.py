"""Private blocks near identity data: which blocks they are, and every string in them."""

from __future__ import annotations

from typing import Any, cast

from pydicom.dataset import Dataset

from bidsafe.phi.dicomtext import PRIVATE_TEXT_VRS, private_category, private_text, resolved_vr
from bidsafe.phi.value import PersonalValue

# Private blocks that hold patient or visit identity, whatever their elements are called: PACS gateways and
# worklist brokers repeat the patient's name, ID and birth date there (often as OB, so the PN rule above misses
# them), and vendors keep patient data in the private group right after the patient group (0011). Matched on
# the private creator, case-insensitively. Device and protocol blocks (CSA, GEMS_IDEN's product ID) are not
# listed: their strings are physics or model names, and harvesting them would flag every release.
IDENTITY_PRIVATE_CREATORS = ("PATI", "PERSON", "UTF8 ATTRIBUTES", "LINKED ATTRIBUTES", "CTP", "IDENTITY")
IDENTITY_PRIVATE_GROUPS = frozenset({0x0011})


_NEAR_IDENTITY_CREATORS: dict[object, bool] = {}


def near_identity(ds: Dataset, tag: int, blocks: dict[int, bool]) -> bool:
    """Whether a private element's block holds identity data (IDENTITY_PRIVATE_GROUPS/CREATORS); cached per block
    and per creator value (enhanced headers repeat the same private blocks in thousands of items)."""
    block = (tag & 0xFFFF0000) | (tag & 0xFFFF) >> 8
    near = blocks.get(block)
    if near is None:
        if tag >> 16 in IDENTITY_PRIVATE_GROUPS:
            near = True
        else:
            elem = cast("dict[int, Any]", ds._dict).get(block)
            creator = elem.value if elem is not None else ""
            key = creator if isinstance(creator, (str, bytes)) else str(creator)
            near = _NEAR_IDENTITY_CREATORS.get(key)
            if near is None:
                text = key.decode("latin-1") if isinstance(key, bytes) else key
                near = _NEAR_IDENTITY_CREATORS[key] = any(m in text.upper() for m in IDENTITY_PRIVATE_CREATORS)
        blocks[block] = near
    return near


def harvest_private_identity(ds: Dataset, prefix: str = "") -> set[PersonalValue]:
    """Strings in private blocks near identity data (see IDENTITY_PRIVATE_CREATORS/GROUPS), at every level.

    An addition to `harvest_dataset` (which takes private PN elements only): the leak scan uses both.
    """
    found: set[PersonalValue] = set()
    _harvest_private_into(ds, prefix, found)
    return found


def _harvest_private_into(ds: Dataset, prefix: str, found: set[PersonalValue]) -> None:
    # Looks at tags and VRs before decoding anything: a header's big private blocks (CSA, vendor physics)
    # are skipped without being parsed, as in `_harvest_into`.
    creators: dict[int, str] = {}
    for key, raw in list(ds._dict.items()):
        tag = int(key)
        group, element = tag >> 16, tag & 0xFFFF
        vr = raw.VR
        if not group & 1:
            if (vr if vr not in (None, "UN") else resolved_vr(tag, None)) == "SQ":
                elem = ds[tag]
                name = elem.keyword or f"({group:04X},{element:04X})"
                for item in elem.value or ():
                    _harvest_private_into(item, f"{prefix}{name}>", found)
            continue
        if element < 0x1000:
            continue  # private creator elements name a block; they are not its content
        block = (group << 16) | (element >> 8)
        if block not in creators:
            creators[block] = str(ds[block].value).upper() if block in ds._dict else ""
        creator = creators[block]
        near_identity = group in IDENTITY_PRIVATE_GROUPS or any(m in creator for m in IDENTITY_PRIVATE_CREATORS)
        if vr == "SQ" or (near_identity and vr in (None, "UN")):
            elem = ds[tag]  # decoding resolves implicit VRs (private dictionary) and sequences
            vr = elem.VR
            if vr == "SQ":
                for item in elem.value or ():
                    _harvest_private_into(item, f"{prefix}({group:04X},{element:04X})>", found)
                continue
        if not near_identity or vr not in PRIVATE_TEXT_VRS:
            continue
        elem = ds[tag]
        for text in private_text(elem.value, ds._character_set):
            found.add(PersonalValue(private_category(text), f"{prefix}({group:04X},{element:04X})", text))
