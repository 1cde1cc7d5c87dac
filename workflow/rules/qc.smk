rule qc:
    input:
        bids=rules.deface.output.bids,
    output:
        metrics=directory(WORK / "qc" / SESSION),
    log:
        LOGS / "qc" / "sub-{subject}_ses-{session}.log",
    resources:
        mem_mb=2000,
    threads: 1
    conda:
        "../../envs/release.yaml"
    script:
        "../scripts/qc.py"
