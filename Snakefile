# bidsafe: raw MRI DICOM sessions -> a de-identified, defaced, validated BIDS release.
# A table of contents only: the stages live in workflow/rules/, the logic in src/bidsafe/.
from snakemake.utils import min_version

min_version("9.0")


# A site's own --configfile replaces the demo defaults whole, so no demo path is ever inherited by accident.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/pseudonymise.smk"
include: "workflow/rules/deid.smk"
include: "workflow/rules/convert.smk"
include: "workflow/rules/scrub.smk"
include: "workflow/rules/deface.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/release.smk"


rule all:
    default_target: True
    input:
        published_target(),
        report_target(),


# The start of every run that has jobs to do (after Snakemake took its lock, before any job): the run lock on
# work_dir and private_dir, then what killed jobs left is removed and the private area's modes are tightened
# (bidsafe.recovery); counts only, never names.
onstart:
    import sys
    from bidsafe.private import ensure_private_dir
    from bidsafe.recovery import hold_run_lock, sweep_leftovers, tighten_private_tree

    # one run at a time on these data areas, however started (a second one stops here, before any job)
    hold_run_lock(WORK, PRIVATE)
    for folder in PRIVATE_FOLDERS:
        ensure_private_dir(folder)
    swept = sweep_leftovers(WORK, PRIVATE, Path(".snakemake"))
    tighten_private_tree(PRIVATE)
    if swept:
        print(f"bidsafe: removed {swept} leftover(s) of a stopped run", file=sys.stderr)


# The end of every run: five lines (published or not, sessions, gates, where the report is). After a failure the
# report is written from whatever the run left (the report job did not run), saying what is missing.
onsuccess:
    from bidsafe.release.runreport import finish_run

    finish_run(WORK, PRIVATE, failed=False)


onerror:
    from bidsafe.release.runreport import finish_run

    finish_run(WORK, PRIVATE, failed=True, log=log)
