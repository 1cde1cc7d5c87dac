from pathlib import Path

from bidsafe.ingest import index_inbox
from bidsafe.runlog import log_to

with log_to(snakemake.log[0]) as log:  # noqa: F821 (snakemake injects this object)
    summary = index_inbox(
        Path(snakemake.params.inbox),  # noqa: F821
        Path(snakemake.output.index),  # noqa: F821
        Path(snakemake.output.quarantine),  # noqa: F821
        cache=Path(snakemake.params.cache),  # noqa: F821
    )
    log.info("ingest: %s", summary)
