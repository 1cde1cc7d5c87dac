rule scrub:
    input:
        bids=rules.convert.output.bids,
        dicom=rules.deid.output.dicom,
        values=rules.deid.output.values,
    output:
        bids=directory(WORK / "scrub" / SESSION / "bids"),
    params:
        allowlist=SIDECAR_ALLOWLIST,
        vocabulary=DEID_VOCABULARY,
    log:
        LOGS / "scrub" / "sub-{subject}_ses-{session}.log",
    resources:
        mem_mb=1000,
    threads: 1
    conda:
        "../../envs/dicom.yaml"
    script:
        "../scripts/scrub.py"
