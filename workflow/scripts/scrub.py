from pathlib import Path

from bidsafe.profile import write_stage_profile
from bidsafe.runlog import log_to
from bidsafe.stages import scrub_stage

with log_to(snakemake.log[0]) as log:  # noqa: F821 (snakemake injects this object)
    status = scrub_stage(
        in_bids=Path(snakemake.input.bids),  # noqa: F821
        out_bids=Path(snakemake.output.bids),  # noqa: F821
        status_json=Path(snakemake.output.status),  # noqa: F821
        upstream_status=Path(snakemake.input.upstream_status),  # noqa: F821
        values_json=Path(snakemake.input.values),  # noqa: F821
        deid_dir=Path(snakemake.input.dicom),  # noqa: F821
        allowlist=Path(snakemake.input.allowlist),  # noqa: F821
        vocabulary=list(snakemake.input.vocabulary),  # noqa: F821
    )
    log.info("scrub: %s", status)
    write_stage_profile(
        snakemake.output.profile,  # noqa: F821
        {
            "sidecar_allowlist": snakemake.input.allowlist,  # noqa: F821
            "vocabulary": [snakemake.input.shipped_vocabulary, *snakemake.input.vocabulary],  # noqa: F821
        },
    )
