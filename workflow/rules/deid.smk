rule deid:
    input:
        files=session_file_list,
    output:
        dicom=directory(WORK / "deid" / SESSION),
        values=PRIVATE / "phi" / "sub-{subject}_ses-{session}.json",
        report=PRIVATE / "deid" / "sub-{subject}_ses-{session}.json",
        status=status_file("deid"),
    params:
        inbox=INBOX,
        rules=DEID_RULES,
        vocabulary=DEID_VOCABULARY,
        key=PRIVATE / "secret.key",
    log:
        LOGS / "deid" / "sub-{subject}_ses-{session}.log",
    resources:
        mem_mb=2000,
    threads: config["deid"]["jobs"]
    conda:
        "../../envs/dicom.yaml"
    script:
        "../scripts/deid.py"


rule deidentified:
    """Partial target: every included session de-identified (for checking rules on real data)."""
    input:
        per_included_session(str(WORK / "deid" / SESSION)),
