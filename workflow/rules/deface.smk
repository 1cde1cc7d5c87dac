rule deface:
    input:
        bids=rules.scrub.output.bids,
        upstream_status=rules.scrub.output.status,
    output:
        bids=directory(WORK / "deface" / SESSION / "bids"),
        status=status_file("deface"),
        records=WORK / "deface" / SESSION / "records.json",
        pictures=directory(WORK / "deface" / SESSION / "qc"),
    log:
        LOGS / "deface" / "sub-{subject}_ses-{session}.log",
    conda:
        "../../envs/deface.yaml"
    threads: config["deface"]["threads"]
    resources:
        mem_mb=sized(1500),
        runtime=sized(10, per_1000_files=0.3),
    params:
        engine=config["deface"]["engine"],
        exempt=config["deface"]["exempt"],
        suffixes=config["deface"]["suffixes"],
        templates=config["deface"]["templates"],
        applyto=config["deface"]["applyto"],
    script:
        "../scripts/deface.py"
