# Config validation, data areas and every input function: rule bodies stay declarative.
import math
import os
from pathlib import Path

from bidsafe.bidsnames import LABEL
from bidsafe.config import check_config
from bidsafe.deid.rules import require_checked_rules
from bidsafe.deid.vocabulary import DEFAULT_VOCABULARY
from bidsafe.ingest import resolve_inbox
from bidsafe.keys import resolve_key_path
from bidsafe.private import check_areas, check_writable_area
from bidsafe.pseudonymise.settings import STAGE_KEYS as PSEUDONYMISE_KEYS
from bidsafe.recovery import scratch_dir
from bidsafe.steps import put_interpreter_first_on_path
from bidsafe.release.datalad_release import require_datalad_tools

# One line per problem naming the key and what is allowed (not a jsonschema dump); defaults filled in place.
check_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")

# The configured inbox may be a symbolic link: resolved once here, so every stage reads the same real folder
# (links inside the inbox are never followed; see bidsafe.ingest).
# A loop or a missing inbox stops the run here, naming the key but never the path (it may name a patient).
INBOX = resolve_inbox(config["inbox"])
WORK = Path(config["work_dir"])
PRIVATE = Path(config["private_dir"])
RELEASE = Path(config["release_dir"])
LOGS = WORK / "logs"
# the secret key, by the rule `bidsafe deid --configfile` follows too (bidsafe.keys.resolve_key_path)
KEY = resolve_key_path(private_dir=PRIVATE)

check_areas(INBOX, PRIVATE, WORK, RELEASE)
# publish is the last job: an unwritable release folder must stop the run before the first one
check_writable_area(RELEASE, "release_dir")
# likewise DataLad and git-annex when release.datalad asks for a DataLad dataset beside the versions
if config["release"].get("datalad"):
    require_datalad_tools()
# PRIVATE_SCRATCH: where stages reading identifying input build their files (swept at the start of each run,
# with what killed jobs left: bidsafe.recovery).
PRIVATE_SCRATCH = scratch_dir(PRIVATE)
# Snakemake makes the folders of a job's outputs with the umask's mode (0755): the private ones are made 0700
# first, by the Snakefile's onstart hook (parsing has no side effects: every cluster job parses this file).
PRIVATE_FOLDERS = [
    PRIVATE / name for name in ("ingest", "pseudonymise", "phi/raw", "deid", "dcm2bids", "leakscan", "scratch")
]

SESSION = "sub-{subject}/ses-{session}"


# The per-session rules run `bidsafe step STAGE`: the bidsafe of this workflow's interpreter, put first on the
# jobs' PATH (a cluster job parses this file with the shared venv's Python too: README); under `--sdm conda`
# the job's env comes first and runs its own bidsafe (from the env's post-deploy script).
put_interpreter_first_on_path()


def as_json(value):
    """A structured setting as a `bidsafe step` option's JSON text: a callable param, because Snakemake reads
    the braces of a string param as wildcards."""
    import json

    text = json.dumps(value, sort_keys=True)
    return lambda wildcards: text


# `--sdm conda`: each env's post-deploy script installs bidsafe itself (no dependencies) from BIDSAFE_SOURCE;
# run from a checkout, that is this checkout (a wheel-installed bidsafe: the site sets it to the wheel; README).
if (Path(workflow.basedir) / "pyproject.toml").is_file():
    os.environ.setdefault("BIDSAFE_SOURCE", workflow.basedir)


def status_file(stage):
    """A per-session stage's status (included, or withheld with a reason): see bidsafe.sessionstatus."""
    return WORK / "status" / stage / SESSION / "status.json"


def shipped(path):
    """A configured file: as given if it exists (relative to the run folder), else from this repository."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return Path(workflow.basedir) / path


# Every rule, vocabulary, mapping and allow-list file is an INPUT of the jobs that read it, never a param: a
# param reruns a job only when its value (here: the path) changes, so an edit of the file itself reran
# nothing. As inputs, an edit (newer mtime) reruns exactly the jobs that read the file, and what follows.
DEID_RULES = shipped(config["deid"]["rules"])
DCM2BIDS_CONFIG = shipped(config["dcm2bids"]["config"])
SIDECAR_ALLOWLIST = shipped(config["scrub"]["allowlist"])
# Site extensions of the descriptor vocabulary; the shipped one (SHIPPED_VOCABULARY, the file the code reads
# by default) is always read too.
DEID_VOCABULARY = [str(shipped(p)) for p in config["deid"]["vocabulary"]]
SHIPPED_VOCABULARY = DEFAULT_VOCABULARY


# Inputs rerun a job when the file is newer than its outputs and its content changed; a file put back with an
# older time (`cp -p`, `rsync -t`, an unpacked archive) is not newer, so each job also takes the content
# digest of its files as a param, which reruns it whenever the content differs from its last run.
def content_digest(*paths):
    from bidsafe.profile import content_digest as digest

    return digest(*paths)


ALLOW_WEAKER_RULES = bool(config["deid"].get("allow_weaker_rules", False))
# The check `bidsafe check-rules` runs, before any job: a rejected rule set stops the run here, naming the
# file and its gaps (the deid stage checks again); allow_weaker_rules lets it run, and publish then refuses.
require_checked_rules(DEID_RULES, allow_weaker=ALLOW_WEAKER_RULES)


wildcard_constraints:
    subject=LABEL,
    session=LABEL,


def inbox_fingerprint(wildcards):
    """Changes whenever a file is added to, removed from or changed in the inbox (stat only). A callable
    param: computed when the ingest job is planned (once per run, in the main process), never at parse time,
    so a cluster job of another rule does not stat the whole inbox again."""
    from bidsafe.ingest import inbox_fingerprint as fingerprint

    return fingerprint(INBOX) if INBOX.is_dir() else "missing"


def optional_input(key):
    """A configured private input file (consent registry, demographics) or nothing."""
    from bidsafe.pseudonymise.consent import NONE_REQUIRED, require_input_file

    value = config.get(key)
    # `consent: none-required` is a documented setting, not a file name.
    if not value or (key == "consent" and value.strip().lower() == NONE_REQUIRED):
        return []
    # Missing or unreadable: stop here, before any job; as a missing input of a finished job, Snakemake said
    # "Nothing to be done" and kept the old decisions.
    return [str(require_input_file(key, value))]


_READ_TABLES = {}


def _read_once(reader, path):
    """`reader(path)`, read again only when the file changed: the input functions of every per-session job ask
    for the same table, and reading it per job made planning grow with the square of the archive."""
    st = os.stat(path)
    key = (reader.__name__, str(path), st.st_mtime_ns, st.st_size)
    if key not in _READ_TABLES:
        _READ_TABLES[key] = reader(path)
    return _READ_TABLES[key]


_PSEUDONYMISED = {}


def pseudonymised():
    """The pseudonymise checkpoint's outputs once it has run (IncompleteCheckpointException until then, which
    is how an input function makes its job wait for the checkpoint). Asked once per process: every per-session
    job's inputs and resources ask, and Snakemake's own lookup cost ~0.2 ms each time."""
    if "output" not in _PSEUDONYMISED:
        _PSEUDONYMISED["output"] = checkpoints.pseudonymise.get().output
    return _PSEUDONYMISED["output"]


def included_sessions():
    from bidsafe.pseudonymise.sessionlists import included_sessions as included

    return _read_once(included, pseudonymised().sessions)


def _sessions_by_subject(path):
    from bidsafe.pseudonymise.sessionlists import all_sessions

    by_subject = {}
    for decision in all_sessions(path):
        by_subject.setdefault(decision.subject, []).append(decision.session)
    return by_subject


def per_included_session(pattern):
    def expand_sessions(wildcards):
        return [pattern.format(subject=s, session=t) for s, t in included_sessions()]

    return expand_sessions


def session_file_list(wildcards):
    """The session's file list, from the pseudonymise checkpoint's declared folder of lists."""
    lists = Path(pseudonymised().session_lists)
    return lists / f"sub-{wildcards.subject}" / f"ses-{wildcards.session}" / "files.txt"


def subject_harvests(wildcards):
    """The raw harvest of every session of this subject (included or not): de-identification cleans each
    session's text of the patient's values as written in any of their visits. A new session of the subject
    therefore reruns de-identification of its earlier sessions (their text may hold the new spelling)."""
    by_subject = _read_once(_sessions_by_subject, pseudonymised().sessions)
    return [
        str(PRIVATE / "phi" / "raw" / f"sub-{wildcards.subject}_ses-{session}.json")
        for session in by_subject.get(wildcards.subject, [])
    ]


def profile_parts():
    """The profile parts of every included session: one per stage that reads a rule, mapping or list file."""

    def parts(wildcards):
        return [
            str(WORK / "profile" / SESSION / f"{stage}.json").format(subject=s, session=t)
            for s, t in included_sessions()
            for stage in ("deid", "convert", "scrub")
        ]

    return parts


def converted_target():
    return per_included_session(str(WORK / "convert" / SESSION / "bids"))


def published_target():
    return WORK / "publish" / "published.json"


def report_target():
    return WORK / "report" / "bidsafe-report.html"


# Job sizes. Each step declares threads and resources (mem_mb; runtime in minutes) set from the peaks that
# benchmarks/rule_resources.py measured (README, "Running on a SLURM cluster"), plus what Snakemake itself holds
# in a cluster job (it re-parses this workflow there, ~150 MB), with margin. Per-session stages grow with the
# session's DICOM files, release stages with the included sessions.
def session_files(wildcards):
    """DICOM files of one session: the line count of its private file list (a number, never a name)."""
    return _read_once(_count_lines, session_file_list(wildcards))


def _count_lines(path):
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def release_sessions():
    """Included sessions; 0 while the pseudonymise checkpoint is pending (a dry run): the jobs that follow it are
    built again, and sized again, once it has run. (Snakemake itself turns that case into a bare 0 it cannot
    use as a resource.)"""
    from snakemake.exceptions import IncompleteCheckpointException

    try:
        return len(included_sessions())
    except IncompleteCheckpointException:
        return 0


def sized(base, per_1000_files=0, per_session=0):
    """A resource (mem_mb, runtime) from a base, the session's files and the release's sessions; doubled on the
    retry (profiles/default: retries), for a job killed at its memory or time limit."""

    def size(wildcards, attempt):
        value = base
        if per_1000_files:
            value += per_1000_files * session_files(wildcards) / 1000
        if per_session:
            value += per_session * release_sessions()
        return math.ceil(value * attempt)

    return size
