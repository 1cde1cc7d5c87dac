from pathlib import Path

from bidsafe.fsutil import atomic_dir
from bidsafe.pseudonymise.stage import run_pseudonymise
from bidsafe.runlog import log_to

with log_to(snakemake.log[0]) as log:  # noqa: F821 (snakemake injects this object)
    # the folder appears whole: a killed job leaves no half-written one
    with atomic_dir(snakemake.output.participants) as participants:  # noqa: F821
        result = run_pseudonymise(
            Path(snakemake.input.index),  # noqa: F821
            Path(snakemake.params.inbox),  # noqa: F821
            Path(snakemake.params.private_dir),  # noqa: F821
            participants,
            snakemake.params.settings,  # noqa: F821
            work_dir=Path(snakemake.params.work_dir),  # noqa: F821 (a withdrawn participant's data are removed)
        )
    for decision in result.decisions:
        log.info("sub-%s ses-%s: %s", decision.subject, decision.session, decision.reason or "included")
