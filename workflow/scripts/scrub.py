from pathlib import Path

from bidsafe.deid.vocabulary import vocabulary_for
from bidsafe.phi import load_values
from bidsafe.profile import write_stage_profile
from bidsafe.runlog import log_to
from bidsafe.scrub import scrub_session

with log_to(snakemake.log[0]) as log:  # noqa: F821 (snakemake injects this object)
    report = scrub_session(
        Path(snakemake.input.bids),  # noqa: F821
        Path(snakemake.output.bids),  # noqa: F821
        values=load_values(snakemake.input.values),  # noqa: F821
        deid_dir=Path(snakemake.input.dicom),  # noqa: F821
        allowlist=Path(snakemake.input.allowlist),  # noqa: F821
        vocabulary=vocabulary_for(list(snakemake.input.vocabulary)),  # noqa: F821
    )
    log.info("scrub: %s", report)
    write_stage_profile(
        snakemake.output.profile,  # noqa: F821
        {
            "sidecar_allowlist": snakemake.input.allowlist,  # noqa: F821
            "vocabulary": [snakemake.input.shipped_vocabulary, *snakemake.input.vocabulary],  # noqa: F821
        },
    )
