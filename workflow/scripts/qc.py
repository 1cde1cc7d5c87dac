from pathlib import Path

from bidsafe.runlog import log_to
from bidsafe.stages import qc_stage

with log_to(snakemake.log[0]):  # noqa: F821 (snakemake injects this object)
    qc_stage(
        in_bids=Path(snakemake.input.bids),  # noqa: F821
        out_dir=Path(snakemake.output.metrics),  # noqa: F821
        status_json=Path(snakemake.output.status),  # noqa: F821
        upstream_status=Path(snakemake.input.upstream_status),  # noqa: F821
        subject=snakemake.wildcards.subject,  # noqa: F821
        session=snakemake.wildcards.session,  # noqa: F821
    )
