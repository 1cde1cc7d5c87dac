from pathlib import Path

from bidsafe.pseudonymise.stage import pseudonymise_stage
from bidsafe.runlog import log_to

with log_to(snakemake.log[0]):  # noqa: F821 (snakemake injects this object)
    pseudonymise_stage(
        Path(snakemake.input.index),  # noqa: F821
        Path(snakemake.params.inbox),  # noqa: F821
        Path(snakemake.params.private_dir),  # noqa: F821
        Path(snakemake.output.participants),  # noqa: F821
        snakemake.params.settings,  # noqa: F821
        work_dir=Path(snakemake.params.work_dir),  # noqa: F821 (a withdrawn participant's data are removed)
    )
