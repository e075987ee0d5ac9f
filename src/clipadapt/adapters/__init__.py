"""The IMO bottleneck adapter, its training loops and the intra-modal-overlap metric."""
