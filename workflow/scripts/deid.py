from pathlib import Path

from bidsafe.deid.stage import deid_stage
from bidsafe.runlog import log_to

with log_to(snakemake.log[0]):  # noqa: F821 (snakemake injects this object)
    deid_stage(
        status_json=Path(snakemake.output.status),  # noqa: F821
        files_txt=Path(snakemake.input.files),  # noqa: F821
        inbox=Path(snakemake.params.inbox),  # noqa: F821
        out_dir=Path(snakemake.output.dicom),  # noqa: F821
        values_json=Path(snakemake.output.values),  # noqa: F821
        report_json=Path(snakemake.output.report),  # noqa: F821
        rules_path=Path(snakemake.input.rules),  # noqa: F821
        key_path=Path(snakemake.params.key),  # noqa: F821
        subject=snakemake.wildcards.subject,  # noqa: F821
        jobs=snakemake.threads,  # noqa: F821
        vocabulary=list(snakemake.input.vocabulary),  # noqa: F821
        allow_weaker_rules=bool(snakemake.params.allow_weaker_rules),  # noqa: F821
        profile_json=Path(snakemake.output.profile),  # noqa: F821
        subject_values=[Path(p) for p in snakemake.input.subject_values],  # noqa: F821
        scratch=Path(snakemake.params.scratch),  # noqa: F821
    )
