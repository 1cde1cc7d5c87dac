from pathlib import Path

from bidsafe.runlog import log_to
from bidsafe.stages import assemble_stage

with log_to(snakemake.log[0]):  # noqa: F821 (snakemake injects this object)
    assemble_stage(
        staging=Path(snakemake.output.staging),  # noqa: F821
        included_tsv=Path(snakemake.output.included),  # noqa: F821
        session_status=[Path(p) for p in snakemake.input.session_status],  # noqa: F821
        defaced=[Path(p) for p in snakemake.input.deface_bids],  # noqa: F821
        qc_dirs=[Path(p) for p in snakemake.input.qc],  # noqa: F821
        participants_dir=Path(snakemake.input.participants),  # noqa: F821
        release_config=snakemake.params.release,  # noqa: F821
        profile_parts=[Path(p) for p in snakemake.input.profile_parts],  # noqa: F821
        profiles_json=Path(snakemake.output.profiles),  # noqa: F821
        release_dir=Path(snakemake.params.release_dir),  # noqa: F821
    )
