# Config validation, data areas and every input function: rule bodies stay declarative.
from pathlib import Path

from snakemake.utils import validate

from bidsafe.private import check_areas, ensure_private_dir


validate(config, schema="../schemas/config.schema.yaml")

INBOX = Path(config["inbox"])
WORK = Path(config["work_dir"])
PRIVATE = Path(config["private_dir"])
RELEASE = Path(config["release_dir"])
LOGS = WORK / "logs"

check_areas(INBOX, PRIVATE, WORK, RELEASE)
ensure_private_dir(PRIVATE)

SESSION = "sub-{subject}/ses-{session}"


def status_file(stage):
    """A per-session stage's status (included, or withheld with a reason): see bidsafe.sessionstatus."""
    return WORK / "status" / stage / SESSION / "status.json"


def shipped(path):
    """A configured file: as given if it exists (relative to the run folder), else from this repository."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return Path(workflow.basedir) / path


DEID_RULES = shipped(config["deid"]["rules"])
DCM2BIDS_CONFIG = shipped(config["dcm2bids"]["config"])
SIDECAR_ALLOWLIST = shipped(config["scrub"]["allowlist"])
# Site extensions of the descriptor vocabulary (the shipped config/deid/vocabulary.yaml is always read).
DEID_VOCABULARY = [str(shipped(p)) for p in config["deid"]["vocabulary"]]


wildcard_constraints:
    subject="[A-Za-z0-9]+",
    session="[A-Za-z0-9]+",


def inbox_fingerprint():
    """Changes whenever a file is added to, removed from or changed in the inbox (stat only)."""
    from bidsafe.ingest import inbox_fingerprint as fingerprint

    return fingerprint(INBOX) if INBOX.is_dir() else "missing"


def optional_input(key):
    """A configured private input file (consent registry, demographics) or nothing."""
    value = config.get(key)
    return [value] if value else []


def session_table():
    """The pseudonymise checkpoint's decisions; evaluated once that stage has run."""
    from bidsafe.pseudonym import all_sessions

    return all_sessions(checkpoints.pseudonymise.get().output.sessions)


def included_sessions():
    from bidsafe.pseudonym import included_sessions as included

    return included(checkpoints.pseudonymise.get().output.sessions)


def per_included_session(pattern):
    def expand_sessions(wildcards):
        return [pattern.format(subject=s, session=t) for s, t in included_sessions()]

    return expand_sessions


def session_file_list(wildcards):
    # Written by the pseudonymise checkpoint only when its content changes, so finished sessions are not redone.
    checkpoints.pseudonymise.get()
    return PRIVATE / "sessions" / f"sub-{wildcards.subject}" / f"ses-{wildcards.session}" / "files.txt"


def converted_target():
    return per_included_session(str(WORK / "convert" / SESSION / "bids"))


def published_target():
    return WORK / "publish" / "published.json"


def report_target():
    return WORK / "report" / "bidsafe-report.html"
