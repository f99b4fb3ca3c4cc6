"""Meta-training on Ray Train + DeepSpeed: episode shards, the worker loop, the stage driver."""
