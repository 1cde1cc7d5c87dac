from pathlib import Path

from bidsafe.ingest import index_inbox
from bidsafe.runlog import log_to

with log_to(snakemake.log[0]) as log:  # noqa: F821 (snakemake injects this object)
    index = Path(snakemake.output.index)  # noqa: F821
    summary = index_inbox(
        Path(snakemake.params.inbox),  # noqa: F821
        index,
        Path(snakemake.output.quarantine),  # noqa: F821
        cache=index if index.exists() else None,
    )
    log.info("ingest: %s", summary)
