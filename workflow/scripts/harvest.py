from pathlib import Path

from bidsafe.deid.stage import harvest_stage
from bidsafe.runlog import log_to

with log_to(snakemake.log[0]):  # noqa: F821 (snakemake injects this object)
    harvest_stage(
        files_txt=Path(snakemake.input.files),  # noqa: F821
        inbox=Path(snakemake.params.inbox),  # noqa: F821
        values_json=Path(snakemake.output.values),  # noqa: F821
    )
