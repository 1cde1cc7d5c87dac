"""Citation metadata of a release version: `CITATION.cff` (Citation File Format 1.2.0) and `datacite.json`
(DataCite Metadata Schema 4.5, the JSON form DataCite's REST API takes), from `release.citation:`.

Both describe one published version: its number (`N.0.0`, as in CHANGES), the date, the version's DOI or
landing page when configured, and (datacite.json) the previous version as `IsNewVersionOf`. They are
regenerated for each version like CHANGES, so publish leaves them out of "did anything change" and rewrites
them when it publishes a staging tree under another number (bidsafe.release.publish).

Everything here comes from the site's config and the version number: no value from the data is read.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bidsafe.config import schema_defaults
from bidsafe.fsutil import atomic_write_json, atomic_write_text

CFF_NAME = "CITATION.cff"
DATACITE_NAME = "datacite.json"
# Both carry the version number and date: regenerated for each version, never evidence of a change.
PER_VERSION_FILES = frozenset({CFF_NAME, DATACITE_NAME})
# datacite.json is no BIDS file: listed in .bidsignore so the validator passes over it.
BIDSIGNORED = frozenset({DATACITE_NAME})

CITATION_DEFAULTS: dict[str, Any] = schema_defaults("release", "citation")
DATACITE_SCHEMA_VERSION = "http://datacite.org/schema/kernel-4"
UNAVAILABLE = "(:unav)"  # DataCite's standard value for "unknown"

CC0 = {
    "rights": "Creative Commons Zero v1.0 Universal",
    "rightsUri": "https://creativecommons.org/publicdomain/zero/1.0/legalcode",
    "rightsIdentifier": "CC0-1.0",
    "rightsIdentifierScheme": "SPDX",
    "schemeUri": "https://spdx.org/licenses/",
}
_CC0_IDS = frozenset({"cc0", "cc0-1.0"})


def is_cc0(license_id: str) -> bool:
    return license_id.strip().lower() in _CC0_IDS


# --------------------------------------------------------------------------------------------- config
def citation_config(rc: Mapping[str, Any]) -> dict[str, Any]:
    """`release.citation` with defaults filled in; `creators` from `authors` (each a name) when empty."""
    citation = rc.get("citation")
    section: Mapping[str, Any] = citation if isinstance(citation, Mapping) else {}
    cc = {**CITATION_DEFAULTS, **{k: v for k, v in dict(section).items() if v is not None}}
    creators = [dict(c) for c in cc.get("creators") or []]
    if not creators:
        creators = [{"name": str(a)} for a in rc.get("authors") or []]
    cc["creators"] = creators
    cc["title"] = cc.get("title") or rc["name"]
    return cc


def writes_citation(rc: Mapping[str, Any]) -> bool:
    """True when the release carries CITATION.cff and datacite.json (there is somebody to cite)."""
    return bool(citation_config(rc)["creators"])


def source_datasets(rc: Mapping[str, Any]) -> list[dict[str, str]]:
    return [dict(s) for s in citation_config(rc).get("source_datasets") or []]


def _render(template: str | None, version: int) -> str | None:
    return template.replace("{version}", str(version)) if template else None


def version_doi(rc: Mapping[str, Any], version: int) -> str | None:
    return _render(citation_config(rc).get("doi"), version)


def version_url(rc: Mapping[str, Any], version: int) -> str | None:
    return _render(citation_config(rc).get("url"), version)


def previous_identifier(rc: Mapping[str, Any], previous: int) -> dict[str, str]:
    """How datacite.json names version `previous`: its DOI, else its URL, else the relative link `../v<N>`
    (a URI reference that resolves beside this version in the release folder, a mirror or a clone)."""
    doi = version_doi(rc, previous)
    if doi:
        return {"relatedIdentifier": doi, "relatedIdentifierType": "DOI"}
    return {"relatedIdentifier": version_url(rc, previous) or f"../v{previous}", "relatedIdentifierType": "URL"}


def _publisher(cc: Mapping[str, Any]) -> str:
    if cc.get("publisher"):
        return str(cc["publisher"])
    for creator in cc["creators"]:
        if creator.get("affiliation"):
            return str(creator["affiliation"])
    return UNAVAILABLE


# --------------------------------------------------------------------------------------------- CFF
def _cff_author(creator: Mapping[str, Any]) -> dict[str, str]:
    if creator.get("family_names"):
        author = {"family-names": str(creator["family_names"])}
        if creator.get("given_names"):
            author["given-names"] = str(creator["given_names"])
    else:
        author = {"name": str(creator["name"])}  # an entity: an organisation, or a name not split in two
    if creator.get("orcid"):
        author["orcid"] = f"https://orcid.org/{creator['orcid']}"
    if creator.get("affiliation"):
        author["affiliation"] = str(creator["affiliation"])
    return author


def citation_cff(rc: Mapping[str, Any], version: int, date: str, label: str) -> dict[str, Any]:
    """The content of CITATION.cff for version `version` (`label`, e.g. 1.0.0) released on `date`."""
    cc = citation_config(rc)
    record: dict[str, Any] = {
        "cff-version": "1.2.0",
        "message": "If you use these data, please cite them as below.",
        "type": "dataset",
        "title": cc["title"],
        "version": label,
        "date-released": date,
        "authors": [_cff_author(c) for c in cc["creators"]],
    }
    doi = version_doi(rc, version)
    if doi:
        record["doi"] = doi
    url = version_url(rc, version)
    if url:
        record["url"] = url
    if rc.get("dataset_doi"):
        record["identifiers"] = [{"type": "doi", "value": _bare_doi(rc["dataset_doi"]),
                                  "description": "all versions of the dataset"}]
    if is_cc0(rc["license"]):
        record["license"] = "CC0-1.0"  # CFF takes SPDX identifiers only: a site's agreement has none
    if cc.get("abstract"):
        record["abstract"] = cc["abstract"]
    if cc.get("keywords"):
        record["keywords"] = list(cc["keywords"])
    return record


def _bare_doi(doi: str) -> str:
    text = str(doi).strip()
    for prefix in ("https://doi.org/", "http://doi.org/", "doi:"):
        if text.lower().startswith(prefix):
            return text[len(prefix):]
    return text


def cff_text(record: Mapping[str, Any]) -> str:
    body = yaml.safe_dump(dict(record), sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)
    return "# Citation File Format 1.2.0 (https://citation-file-format.github.io/), written by bidsafe\n" + body


# --------------------------------------------------------------------------------------------- DataCite
def _datacite_creator(creator: Mapping[str, Any]) -> dict[str, Any]:
    if creator.get("family_names"):
        given = creator.get("given_names")
        out: dict[str, Any] = {
            "name": f"{creator['family_names']}, {given}" if given else str(creator["family_names"]),
            "nameType": "Personal",
            "familyName": str(creator["family_names"]),
        }
        if given:
            out["givenName"] = str(given)
    else:
        out = {"name": str(creator["name"])}
    if creator.get("orcid"):
        out["nameIdentifiers"] = [{"nameIdentifier": f"https://orcid.org/{creator['orcid']}",
                                   "nameIdentifierScheme": "ORCID", "schemeUri": "https://orcid.org"}]
    if creator.get("affiliation"):
        out["affiliation"] = [{"name": str(creator["affiliation"])}]
    return out


def datacite_record(
    rc: Mapping[str, Any], version: int, date: str, label: str, previous: int | None, agreement: str | None
) -> dict[str, Any]:
    """DataCite 4.5 metadata of version `version`; `previous` is the version it follows (None for the first),
    `agreement` the data usage agreement (None for a CC0 release)."""
    cc = citation_config(rc)
    record: dict[str, Any] = {}
    doi = version_doi(rc, version)
    if doi:
        record["doi"] = doi
    url = version_url(rc, version)
    if url:
        record["url"] = url
    record.update({
        "types": {"resourceTypeGeneral": "Dataset", "resourceType": "MRI dataset (BIDS)"},
        "creators": [_datacite_creator(c) for c in cc["creators"]],
        "titles": [{"title": cc["title"]}],
        "publisher": {"name": _publisher(cc)},
        "publicationYear": date[:4],
        "dates": [{"date": date, "dateType": "Issued"}],
        "version": label,
        "formats": ["BIDS"],
    })
    if is_cc0(rc["license"]):
        record["rightsList"] = [dict(CC0)]
    else:
        text = "Data usage agreement (see LICENSE): " + " ".join((agreement or "").split())
        record["rightsList"] = [{"rights": text, "rightsIdentifier": str(rc["license"])}]
    related = []
    if previous is not None:
        related.append({**previous_identifier(rc, previous), "relationType": "IsNewVersionOf"})
    if rc.get("dataset_doi"):
        related.append({"relatedIdentifier": _bare_doi(rc["dataset_doi"]), "relatedIdentifierType": "DOI",
                        "relationType": "IsVersionOf"})
    if related:
        record["relatedIdentifiers"] = related
    descriptions = []
    if cc.get("abstract"):
        descriptions.append({"description": cc["abstract"], "descriptionType": "Abstract"})
    if descriptions:
        record["descriptions"] = descriptions
    if cc.get("keywords"):
        record["subjects"] = [{"subject": k} for k in cc["keywords"]]
    funding = [{"funderName": f} for f in rc.get("funding") or []]
    if funding:
        record["fundingReferences"] = funding
    record["schemaVersion"] = DATACITE_SCHEMA_VERSION
    return record


# --------------------------------------------------------------------------------------------- writing
def write_citation_files(
    dataset: Path, rc: Mapping[str, Any], version: int, date: str, label: str, previous: int | None,
    agreement: str | None,
) -> list[str]:
    """Write CITATION.cff and datacite.json into `dataset` when there is a creator; returns the names written."""
    if not writes_citation(rc):
        return []
    atomic_write_text(Path(dataset) / CFF_NAME, cff_text(citation_cff(rc, version, date, label)))
    atomic_write_json(Path(dataset) / DATACITE_NAME, datacite_record(rc, version, date, label, previous, agreement))
    return [CFF_NAME, DATACITE_NAME]


def staged_citation_version(dataset: Path) -> tuple[str | None, str | None]:
    """(version label, IsNewVersionOf identifier) recorded in a dataset's datacite.json, (None, None) without one."""
    path = Path(dataset) / DATACITE_NAME
    if not path.is_file():
        return None, None
    record = json.loads(path.read_text(encoding="utf-8"))
    previous = next((r.get("relatedIdentifier") for r in record.get("relatedIdentifiers") or []
                     if r.get("relationType") == "IsNewVersionOf"), None)
    return record.get("version"), previous


# --------------------------------------------------------------------------------------------- environment
def runtime_environment(environ: Mapping[str, str] | None = None, root: Path = Path("/")) -> dict[str, Any]:
    """How bidsafe ran, for GeneratedBy: a BIDS `Container` when in one, else the Python environment in words.
    `environ` and `root` (the filesystem root, where container runtimes leave their marker files) are for tests.

    Never a path: a virtual environment's location may name the operator's home folder."""
    env = os.environ if environ is None else environ
    # a site running bidsafe in a container sets this to the image reference (e.g. registry/bidsafe:0.1.0)
    image = env.get("BIDSAFE_CONTAINER_IMAGE")
    container: dict[str, str] | None = None
    if env.get("APPTAINER_CONTAINER") or env.get("SINGULARITY_CONTAINER"):
        container = {"Type": "apptainer"}
    elif (root / ".dockerenv").exists() or (root / "run" / ".containerenv").exists() or image:
        container = {"Type": "docker"}
    if container is not None:
        if image:
            container["Tag"] = image
        return {"Container": container}
    python = f"Python {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    kind = "virtual environment" if sys.prefix != sys.base_prefix else "system installation"
    if env.get("CONDA_DEFAULT_ENV"):
        kind = "conda environment"
    return {"Environment": f"{python} {kind}"}
