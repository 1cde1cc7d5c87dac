rule harvest:
    """Every personal value of one session's raw headers, privately: the subject's other sessions are cleaned
    of them too."""
    input:
        files=session_file_list,
    output:
        values=PRIVATE / "phi" / "raw" / "sub-{subject}_ses-{session}.json",
    log:
        LOGS / "harvest" / "sub-{subject}_ses-{session}.log",
    conda:
        "../../envs/dicom.yaml"
    threads: 1
    resources:
        mem_mb=sized(400, per_1000_files=10),
        runtime=sized(5, per_1000_files=0.5),
    params:
        inbox=INBOX,
    shell:
        "bidsafe step harvest --log {log:q} --files-txt {input.files:q} --inbox {params.inbox:q}"
        " --values-json {output.values:q}"


rule deid:
    input:
        files=session_file_list,
        # the raw harvest of every session of the subject (its other visits' spellings are cleaned too)
        subject_values=subject_harvests,
        # inputs, not params: an edit of any of them reruns deid (and all after it) for every session
        rules=DEID_RULES,
        vocabulary=DEID_VOCABULARY,
        shipped_vocabulary=SHIPPED_VOCABULARY,
    output:
        dicom=directory(WORK / "deid" / SESSION),
        values=PRIVATE / "phi" / "sub-{subject}_ses-{session}.json",
        report=PRIVATE / "deid" / "sub-{subject}_ses-{session}.json",
        status=status_file("deid"),
        # hashes of the files above as this job read them (collected into SHAREABLE.json)
        profile=WORK / "profile" / SESSION / "deid.json",
    log:
        LOGS / "deid" / "sub-{subject}_ses-{session}.log",
    conda:
        "../../envs/dicom.yaml"
    threads: config["deid"]["jobs"]
    resources:
        mem_mb=sized(250 + 100 * config["deid"]["jobs"], per_1000_files=25),
        runtime=sized(5, per_1000_files=0.5),
    params:
        inbox=INBOX,
        key=KEY,
        allow_weaker_rules=ALLOW_WEAKER_RULES,
        content=content_digest(DEID_RULES, SHIPPED_VOCABULARY, *DEID_VOCABULARY),
        # private: files are built here (their text is cleaned of harvested values last); only the finished
        # tree is moved into work_dir
        scratch=PRIVATE_SCRATCH,
    shell:
        "bidsafe step deid --log {log:q} --status-json {output.status:q} --files-txt {input.files:q}"
        " --inbox {params.inbox:q} --out-dir {output.dicom:q} --values-json {output.values:q}"
        " --report-json {output.report:q} --rules-path {input.rules:q} --key-path {params.key:q}"
        " --subject {wildcards.subject:q} --jobs {threads} --vocabulary {input.vocabulary:q}"
        " --allow-weaker-rules {params.allow_weaker_rules} --profile-json {output.profile:q}"
        " --subject-values {input.subject_values:q} --scratch {params.scratch:q}"


rule deidentified:
    """Partial target: every included session de-identified (for checking rules on real data)."""
    input:
        per_included_session(str(WORK / "deid" / SESSION)),
