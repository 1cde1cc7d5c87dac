from pathlib import Path

from bidsafe.runlog import log_to
from bidsafe.stages import scrub_stage

with log_to(snakemake.log[0]):  # noqa: F821 (snakemake injects this object)
    scrub_stage(
        in_bids=Path(snakemake.input.bids),  # noqa: F821
        out_bids=Path(snakemake.output.bids),  # noqa: F821
        status_json=Path(snakemake.output.status),  # noqa: F821
        upstream_status=Path(snakemake.input.upstream_status),  # noqa: F821
        values_json=Path(snakemake.input.values),  # noqa: F821
        deid_dir=Path(snakemake.input.dicom),  # noqa: F821
        allowlist=Path(snakemake.input.allowlist),  # noqa: F821
        vocabulary=list(snakemake.input.vocabulary),  # noqa: F821
        profile_json=Path(snakemake.output.profile),  # noqa: F821
    )
