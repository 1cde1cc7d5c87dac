checkpoint pseudonymise:
    input:
        index=rules.ingest.output.index,
        consent=optional_input("consent"),
        demographics=optional_input("demographics"),
    output:
        sessions=PRIVATE / "pseudonymise" / "sessions.tsv",
        participants=directory(WORK / "pseudonymise"),
        # each session's inbox files (sub-S/ses-T/files.txt), privately; a list whose content did not change
        # reruns nothing (Snakemake compares a small input's checksum when it is newer)
        session_lists=directory(PRIVATE / "sessions"),
    log:
        LOGS / "pseudonymise" / "pseudonymise.log",
    conda:
        "../../envs/dicom.yaml"
    threads: 1
    resources:
        mem_mb=sized(500),
        runtime=sized(15),
    params:
        inbox=INBOX,
        private_dir=PRIVATE,
        # a withdrawn participant's intermediates are removed from here (bidsafe.withdrawal)
        work_dir=WORK,
        # the keys bidsafe.pseudonymise.settings reads (checked, defaults filled above)
        settings={k: config.get(k) for k in PSEUDONYMISE_KEYS},
    script:
        "../scripts/pseudonymise.py"
