"""The `pseudonymise` stage as one package. Imports (and data) flow one way, from the entry point down:

    stage        entry (`pseudonymise_stage` for the workflow, `run_pseudonymise` below it): reads the settings
                 once, calls each part with what it needs
    settings     config -> StageSettings, checked and defaulted by the config schema alone
    studies      ingest's index + one header per study -> Study, StudyIdentity
    consent      the registry and the audience decision (and `consent-template`)
    linkage      labels and the private linkage table (under its lock)
    sessionlists private sessions.tsv and files.txt; their readers for the workflow
    render       participants.tsv/json, sessions.tsv/json   -> kanonymity -> metadata -> columns -> ages
    tables       the small TSV/CSV reader under consent and metadata

No part reads the config or calls back into the stage.
"""
