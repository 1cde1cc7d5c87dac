from pathlib import Path

from bidsafe.runlog import log_to
from bidsafe.stages import report_stage

with log_to(snakemake.log[0]):  # noqa: F821 (snakemake injects this object)
    report_stage(
        html=Path(snakemake.output.html),  # noqa: F821
        summary_json=Path(snakemake.input.summary) / "summary.json",  # noqa: F821
        included_tsv=Path(snakemake.input.included),  # noqa: F821
        gate_reports=[Path(p) for p in snakemake.input.gates],  # noqa: F821
        qc_dirs=[Path(p) for p in snakemake.input.qc],  # noqa: F821
        picture_dirs=[Path(p) for p in snakemake.input.pictures],  # noqa: F821
        conversion_summaries=[Path(p) for p in snakemake.input.conversion],  # noqa: F821
        status_dir=Path(snakemake.params.status_dir),  # noqa: F821
        quarantine_tsv=Path(snakemake.input.quarantine),  # noqa: F821
        published_json=Path(snakemake.input.published),  # noqa: F821
    )
