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
        # JSON, by callables: a string param's braces would be read as wildcards
        exempt=as_json(config["deface"]["exempt"]),
        suffixes=config["deface"]["suffixes"],
        templates=as_json(config["deface"]["templates"]),
        applyto=config["deface"]["applyto"],
    shell:
        "bidsafe step deface --log {log:q} --in-dir {input.bids:q} --out-bids {output.bids:q}"
        " --status-json {output.status:q} --records-json {output.records:q}"
        " --pictures-dir {output.pictures:q} --exempt {params.exempt:q} --suffixes {params.suffixes:q}"
        " --engine {params.engine:q} --upstream-status {input.upstream_status:q}"
        " --templates {params.templates:q} --applyto {params.applyto}"
        " --subject {wildcards.subject:q} --session {wildcards.session:q}"
