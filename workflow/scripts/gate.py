from pathlib import Path

from bidsafe.runlog import log_to
from bidsafe.stages import gate_stage

with log_to(snakemake.log[0]):  # noqa: F821 (snakemake injects this object)
    gate_stage(
        snakemake.params.gate,  # noqa: F821
        Path(snakemake.output.report),  # noqa: F821
        **dict(snakemake.input.items()),  # noqa: F821
        **{k: v for k, v in snakemake.output.items() if k != "report"},  # noqa: F821
        **{k: v for k, v in snakemake.params.items() if k != "gate"},  # noqa: F821
    )
