from pathlib import Path

from bidsafe.convert import convert_session, log_conversion_summary
from bidsafe.profile import write_stage_profile
from bidsafe.runlog import log_to

with log_to(snakemake.log[0]) as log:  # noqa: F821 (snakemake injects this object)
    images = convert_session(
        Path(snakemake.input.dicom),  # noqa: F821
        Path(snakemake.output.bids),  # noqa: F821
        snakemake.wildcards.subject,  # noqa: F821
        snakemake.wildcards.session,  # noqa: F821
        config=Path(snakemake.input.config),  # noqa: F821
        log_dir=Path(snakemake.params.private_logs),  # noqa: F821
        summary_json=Path(snakemake.output.summary),  # noqa: F821
        deid_report=Path(snakemake.input.deid_report),  # noqa: F821
    )
    log.info("converted %d images", len(images))
    log_conversion_summary(log, Path(snakemake.output.summary))  # noqa: F821
    write_stage_profile(snakemake.output.profile, {"dcm2bids_config": snakemake.input.config})  # noqa: F821
