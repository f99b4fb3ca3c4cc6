"""Synthetic preference generation on Ray Data (jobs.generate).

Stages: personas -> questions -> views -> responses (generator ensemble) -> pairing ->
judging in both orders -> iterative persona refinement per user -> parquet by split.
`stages` holds them as plain functions over rows; `sources` says where users and questions
come from; `providers` answers the model calls (the simulated world, or language models
through `llm`, `prompts` and `parsers`); `graph` wires them into Ray Data (model calls through
the engines layer); `shards` commits each shard atomically so a rerun resumes; `pipeline` is
the driver; `report` and `ablation` write data_report.json/.md. See docs/generation.md.
"""
