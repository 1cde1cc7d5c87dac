rule scrub:
    input:
        bids=rules.convert.output.bids,
        dicom=rules.deid.output.dicom,
        values=rules.deid.output.values,
        upstream_status=rules.convert.output.status,
    output:
        bids=directory(WORK / "scrub" / SESSION / "bids"),
        status=status_file("scrub"),
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
