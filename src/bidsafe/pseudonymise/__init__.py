"""The `pseudonymise` stage as one package; data flow one way, from the entry point down:

stage (entry: reads the settings once) -> settings (config -> StageSettings, through the schema)
      -> studies (ingest index + one header per study) -> consent (registry, decision) -> linkage (labels, table)
      -> metadata (values; columns: rules; ages) -> kanonymity -> render (released files)
      -> sessionlists (private sessions.tsv and files.txt)
"""
