"""The DDP trainer: streaming dataset over the shard registry, augmentation, losses, loop."""
