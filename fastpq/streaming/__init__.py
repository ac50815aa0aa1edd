"""Training and validation loops: the streaming metric, torch.distributed, the evaluator."""
