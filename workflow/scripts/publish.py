from pathlib import Path

from bidsafe.runlog import log_to
from bidsafe.stages import publish_stage

with log_to(snakemake.log[0]):  # noqa: F821 (snakemake injects this object)
    publish_stage(
        staging=Path(snakemake.input.staging),  # noqa: F821
        release_dir=Path(snakemake.params.release_dir),  # noqa: F821
        gate_reports=[Path(p) for p in snakemake.input.gates],  # noqa: F821
        profiles_json=Path(snakemake.input.profiles),  # noqa: F821
        published_json=Path(snakemake.output.published),  # noqa: F821
        release_config=snakemake.params.release,  # noqa: F821 (writes CITATION.cff/datacite.json if renumbered)
        datalad=bool(snakemake.params.datalad),  # noqa: F821
    )
