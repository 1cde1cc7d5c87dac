rule convert:
    input:
        dicom=rules.deid.output.dicom,
        # private: read for which series de-identification withheld or failed (never copied)
        deid_report=rules.deid.output.report,
        upstream_status=rules.deid.output.status,
        # an input, not a param: editing the mapping reruns convert (and all after it), not deid
        config=DCM2BIDS_CONFIG,
    output:
        # a small BIDS root per session (sub-S/ses-T/...), like every later per-session stage
        bids=directory(WORK / "convert" / SESSION / "bids"),
        # every series received: converted to which images, or left out and why (shown in the report)
        summary=WORK / "convert" / SESSION / "series.json",
        status=status_file("convert"),
        profile=WORK / "profile" / SESSION / "convert.json",
    log:
        LOGS / "convert" / "sub-{subject}_ses-{session}.log",
    conda:
        "../../envs/dicom.yaml"
    threads: 1
    resources:
        mem_mb=sized(400, per_1000_files=25),
        runtime=sized(5, per_1000_files=0.3),
    params:
        content=content_digest(DCM2BIDS_CONFIG),
        # a string, not a Path: Snakemake fills the wildcards of string params only
        private_logs=str(PRIVATE / "dcm2bids" / SESSION),
        scratch=PRIVATE_SCRATCH,
    shell:
        "bidsafe step convert --log {log:q} --dicom-dir {input.dicom:q} --out-bids {output.bids:q}"
        " --summary-json {output.summary:q} --status-json {output.status:q}"
        " --upstream-status {input.upstream_status:q} --subject {wildcards.subject:q}"
        " --session {wildcards.session:q} --config {input.config:q} --log-dir {params.private_logs:q}"
        " --deid-report {input.deid_report:q} --scratch {params.scratch:q} --profile-json {output.profile:q}"


rule converted:
    """Partial target: every included session converted to BIDS (for debugging a dcm2bids mapping)."""
    input:
        converted_target(),
