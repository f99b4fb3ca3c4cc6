"""Ray Serve: the RAT graph (ingress -> persona -> answer) behind an OpenAI-compatible API.

Pure parts (config, schemas, errors, store, cache) import without Ray; `app.build_app` wires
the deployments.
"""
