from pathlib import Path

from bidsafe.qc import session_qc, write_qc
from bidsafe.runlog import log_to

with log_to(snakemake.log[0]) as log:  # noqa: F821 (snakemake injects this object)
    rows = session_qc(
        Path(snakemake.input.bids),  # noqa: F821
        snakemake.wildcards.subject,  # noqa: F821
        snakemake.wildcards.session,  # noqa: F821
    )
    write_qc(rows, Path(snakemake.output.metrics))  # noqa: F821
    log.info("qc: %d images measured", len(rows))
