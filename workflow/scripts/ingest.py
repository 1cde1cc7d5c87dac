from pathlib import Path

from bidsafe.ingest import ingest_stage
from bidsafe.runlog import log_to

with log_to(snakemake.log[0]):  # noqa: F821 (snakemake injects this object)
    ingest_stage(
        Path(snakemake.params.inbox),  # noqa: F821
        Path(snakemake.output.index),  # noqa: F821
        Path(snakemake.output.quarantine),  # noqa: F821
        cache=Path(snakemake.params.cache),  # noqa: F821
        failed_quarantine=Path(snakemake.params.failed_quarantine),  # noqa: F821
    )
