from pathlib import Path

from bidsafe.runlog import log_to
from bidsafe.stages import convert_stage

with log_to(snakemake.log[0]):  # noqa: F821 (snakemake injects this object)
    convert_stage(
        dicom_dir=Path(snakemake.input.dicom),  # noqa: F821
        out_bids=Path(snakemake.output.bids),  # noqa: F821
        summary_json=Path(snakemake.output.summary),  # noqa: F821
        status_json=Path(snakemake.output.status),  # noqa: F821
        upstream_status=Path(snakemake.input.upstream_status),  # noqa: F821
        subject=snakemake.wildcards.subject,  # noqa: F821
        session=snakemake.wildcards.session,  # noqa: F821
        config=Path(snakemake.input.config),  # noqa: F821
        log_dir=Path(snakemake.params.private_logs),  # noqa: F821
        deid_report=Path(snakemake.input.deid_report),  # noqa: F821
        scratch=Path(snakemake.params.scratch),  # noqa: F821
        profile_json=Path(snakemake.output.profile),  # noqa: F821
    )
