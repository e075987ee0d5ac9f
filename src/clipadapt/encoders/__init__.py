"""Backbone adapters: open_clip models by id ARCH@TAG, batched encoding, device chosen once."""
