# assemble -> four independent gates -> publish; plus the HTML report beside the release.


rule assemble:
    input:
        # the last per-session stage's status: a session withheld at any stage carries its reason here
        session_status=per_included_session(str(status_file("qc"))),
        deface_bids=per_included_session(str(WORK / "deface" / SESSION / "bids")),
        qc=per_included_session(str(WORK / "qc" / SESSION)),
        participants=rules.pseudonymise.output.participants,
        # what each session was processed with, as its stages recorded it (see bidsafe.profile)
        profile_parts=profile_parts(),
    output:
        staging=directory(WORK / "staging" / "release"),
        included=WORK / "staging" / "included.tsv",
        profiles=WORK / "staging" / "profiles.json",
    log:
        LOGS / "release" / "assemble.log",
    conda:
        "../../envs/release.yaml"
    threads: 1
    resources:
        mem_mb=sized(400, per_session=1),
        runtime=sized(5, per_session=0.05),
    params:
        release_dir=RELEASE,
        release=config.get("release", {}),
    script:
        "../scripts/assemble.py"


rule gate_validator:
    input:
        staging=rules.assemble.output.staging,
    output:
        report=WORK / "gates" / "validator.json",
    log:
        LOGS / "gates" / "validator.log",
    conda:
        "../../envs/validator.yaml"
    threads: 1
    resources:
        mem_mb=sized(600, per_session=2),
        runtime=sized(5, per_session=0.05),
    params:
        gate="validator",
        backend=config["validator"]["backend"],
    script:
        "../scripts/gate.py"


rule gate_leak_scan:
    input:
        staging=rules.assemble.output.staging,
        index=rules.ingest.output.index,
        # the shipped vocabulary plus the site's extensions (`deid.vocabulary`: extra files), read by the
        # gate's own loader; inputs, so an edit reruns the gate
        vocabulary=[shipped("config/deid/vocabulary.yaml")]
        + [shipped(p) for p in config.get("deid", {}).get("vocabulary", [])],
        # which sessions are QA/phantom sessions (config `qa_sessions`): their placeholder values are no needles
        sessions_tsv=rules.pseudonymise.output.sessions,
        # each session's inbox files: the gate harvests per session, so each value names its sessions
        sessions_dir=rules.pseudonymise.output.session_lists,
    output:
        report=WORK / "gates" / "leak_scan.json",
        # private (0600): the gate's own harvest of the raw inbox, and each finding's values, the sessions they
        # came from, the allow-list entry that allowed an accepted hit; the public report names files and
        # fields only
        values_json=PRIVATE / "leakscan" / "values.json",
        findings_json=PRIVATE / "leakscan" / "findings.json",
    log:
        LOGS / "gates" / "leak_scan.log",
    conda:
        "../../envs/release.yaml"
    threads: 1
    resources:
        mem_mb=sized(500, per_session=2),
        runtime=sized(10, per_session=0.2),
    params:
        gate="leak_scan",
        inbox=INBOX,
        also=[LOGS],
        # and every other folder of work_dir (intermediates, leftovers of killed jobs): nothing identifying
        # may sit there either (bidsafe.stages.work_folders)
        work_dir=WORK,
        # not an output (Snakemake deletes outputs before a job): the gate's private memory between runs
        memory_dir=PRIVATE / "leakscan" / "memory",
        allow=config.get("release", {}).get("leak_scan", {}).get("allow", []),
    script:
        "../scripts/gate.py"


rule gate_deface:
    input:
        staging=rules.assemble.output.staging,
        included_tsv=rules.assemble.output.included,
        # each session's record of what the deface stage did (the gate reads those of the staged sessions)
        records=per_included_session(str(WORK / "deface" / SESSION / "records.json")),
    output:
        report=WORK / "gates" / "deface.json",
    log:
        LOGS / "gates" / "deface.log",
    conda:
        "../../envs/release.yaml"
    threads: 1
    resources:
        mem_mb=sized(400, per_session=1),
        runtime=sized(5, per_session=0.02),
    params:
        gate="deface",
        exempt=config["deface"]["exempt"],
    script:
        "../scripts/gate.py"


rule gate_consent:
    input:
        staging=rules.assemble.output.staging,
        sessions_tsv=rules.pseudonymise.output.sessions,
    output:
        report=WORK / "gates" / "consent.json",
    log:
        LOGS / "gates" / "consent.log",
    conda:
        "../../envs/release.yaml"
    threads: 1
    resources:
        mem_mb=sized(300),
        runtime=sized(5),
    params:
        gate="consent",
    script:
        "../scripts/gate.py"


rule publish:
    input:
        staging=rules.assemble.output.staging,
        gates=[
            rules.gate_validator.output.report,
            rules.gate_leak_scan.output.report,
            rules.gate_deface.output.report,
            rules.gate_consent.output.report,
        ],
        profiles=rules.assemble.output.profiles,
    output:
        published=WORK / "publish" / "published.json",
    log:
        LOGS / "release" / "publish.log",
    conda:
        "../../envs/release.yaml"
    threads: 1
    resources:
        mem_mb=sized(300),
        runtime=sized(5, per_session=0.05),
    params:
        release_dir=RELEASE,
        release=config.get("release", {}),
        datalad=config.get("release", {}).get("datalad", False),
    script:
        "../scripts/publish.py"


rule report:
    input:
        summary=rules.pseudonymise.output.participants,
        included=rules.assemble.output.included,
        gates=rules.publish.input.gates,
        qc=per_included_session(str(WORK / "qc" / SESSION)),
        pictures=per_included_session(str(WORK / "deface" / SESSION / "qc")),
        conversion=per_included_session(str(WORK / "convert" / SESSION / "series.json")),
        # after publish, so the report names the version published; when publish (or anything) fails, the
        # Snakefile's onerror hook writes the report from what exists instead (bidsafe.release.runreport)
        published=rules.publish.output.published,
        # private: only its reason column is read, and only the ingest stage's fixed reasons are shown
        quarantine=rules.ingest.output.quarantine,
    output:
        html=WORK / "report" / "bidsafe-report.html",
    log:
        LOGS / "release" / "report.log",
    conda:
        "../../envs/release.yaml"
    threads: 1
    resources:
        mem_mb=sized(400, per_session=1),
        runtime=sized(5, per_session=0.02),
    params:
        status_dir=WORK / "status",
    script:
        "../scripts/report.py"
