from pathlib import Path

from bidsafe.runlog import log_to
from bidsafe.stages import deface_stage

with log_to(snakemake.log[0]):  # noqa: F821 (snakemake injects this object)
    deface_stage(
        in_dir=Path(snakemake.input.bids),  # noqa: F821
        out_bids=Path(snakemake.output.bids),  # noqa: F821
        status_json=Path(snakemake.output.status),  # noqa: F821
        records_json=Path(snakemake.output.records),  # noqa: F821
        pictures_dir=Path(snakemake.output.pictures),  # noqa: F821
        exempt=snakemake.params.exempt,  # noqa: F821
        suffixes=snakemake.params.suffixes,  # noqa: F821
        engine=snakemake.params.engine,  # noqa: F821
        upstream_status=Path(snakemake.input.upstream_status),  # noqa: F821
        templates=snakemake.params.templates,  # noqa: F821
        applyto=snakemake.params.applyto,  # noqa: F821
        subject=snakemake.wildcards.subject,  # noqa: F821
        session=snakemake.wildcards.session,  # noqa: F821
    )
