rule scrub:
    input:
        bids=rules.convert.output.bids,
        dicom=rules.deid.output.dicom,
        values=rules.deid.output.values,
        upstream_status=rules.convert.output.status,
        # inputs, not params: an edit of the allow-list or a vocabulary reruns scrub (and all after it)
        allowlist=SIDECAR_ALLOWLIST,
        vocabulary=DEID_VOCABULARY,
        shipped_vocabulary=SHIPPED_VOCABULARY,
    output:
        bids=directory(WORK / "scrub" / SESSION / "bids"),
        status=status_file("scrub"),
        profile=WORK / "profile" / SESSION / "scrub.json",
    log:
        LOGS / "scrub" / "sub-{subject}_ses-{session}.log",
    conda:
        "../../envs/dicom.yaml"
    threads: 1
    resources:
        mem_mb=sized(400, per_1000_files=40),
        runtime=sized(5, per_1000_files=0.5),
    params:
        content=content_digest(SIDECAR_ALLOWLIST, SHIPPED_VOCABULARY, *DEID_VOCABULARY),
    shell:
        "bidsafe step scrub --log {log:q} --in-bids {input.bids:q} --out-bids {output.bids:q}"
        " --status-json {output.status:q} --upstream-status {input.upstream_status:q}"
        " --values-json {input.values:q} --deid-dir {input.dicom:q} --allowlist {input.allowlist:q}"
        " --vocabulary {input.vocabulary:q} --profile-json {output.profile:q}"
