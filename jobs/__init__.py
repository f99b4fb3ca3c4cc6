"""Ray job entrypoints: `python -m jobs.<stage> --config PATH [key.sub=value ...]`."""
