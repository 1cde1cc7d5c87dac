rule qc:
    input:
        bids=rules.deface.output.bids,
        upstream_status=rules.deface.output.status,
    output:
        metrics=directory(WORK / "qc" / SESSION),
        status=status_file("qc"),
    log:
        LOGS / "qc" / "sub-{subject}_ses-{session}.log",
    conda:
        "../../envs/release.yaml"
    threads: 1
    resources:
        mem_mb=sized(600, per_1000_files=40),
        runtime=sized(5, per_1000_files=0.2),
    shell:
        "bidsafe step qc --log {log:q} --in-bids {input.bids:q} --out-dir {output.metrics:q}"
        " --status-json {output.status:q} --upstream-status {input.upstream_status:q}"
        " --subject {wildcards.subject:q} --session {wildcards.session:q}"
