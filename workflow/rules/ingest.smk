rule ingest:
    output:
        index=PRIVATE / "ingest" / "index.tsv",
        quarantine=PRIVATE / "ingest" / "quarantine.tsv",
    log:
        LOGS / "ingest" / "ingest.log",
    conda:
        "../../envs/dicom.yaml"
    threads: 1
    resources:
        mem_mb=sized(500),
        runtime=sized(60),
    params:
        inbox=INBOX,
        # Not an output: Snakemake deletes outputs before a job, and the cache must survive to save re-reads.
        cache=PRIVATE / "ingest" / "cache.tsv",
        # A copy of the quarantine report kept when no study is found (the failed job's outputs are deleted).
        failed_quarantine=PRIVATE / "ingest" / "quarantine-no-study.tsv",
        fingerprint=inbox_fingerprint,
    script:
        "../scripts/ingest.py"
