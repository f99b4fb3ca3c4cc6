"""Synthetic preference generation on Ray Data (jobs.generate).

Stages: personas -> questions -> views -> responses (generator ensemble) -> pairing ->
judging in both orders -> iterative persona refinement per user -> parquet by split.
`stages` holds them as plain functions over rows; `providers` answers the model calls
(the simulated world, or language models through `prompts`/`parsers`); `pipeline` wires
them into Ray Data; `shards` commits each shard atomically so a rerun resumes; `report`
writes data_report.json/.md. See docs/generation.md.
"""
