"""The engines layer: every language-model call of the project goes through here.

`config` (one EngineConfig and Sampling), `local` (the Hugging Face and vLLM engines in this
process), `ray_data` (one Ray Data stage builder with a plain request/response contract) and
`embedder` (the sentence embedder and its section). See docs/design.md.
"""
