"""The IMO bottleneck adapter, its training loops and the intra-modal-overlap metric (docs/methods.md §5)."""

from clipadapt.adapters.imo_adapter import (
    BottleneckAdapter,
    adapter_checkpoint_sha256,
    adapter_state_dict,
    adapters_enabled,
    attach_adapter_checkpoint,
    checkpoint_paths,
    count_adapter_parameters,
    find_adapters,
    insert_adapters,
    load_adapter_checkpoint,
    remove_adapters,
    save_adapter_checkpoint,
    set_adapters_enabled,
)
from clipadapt.adapters.overlap import (
    IMOResult,
    PairHistogramAccumulator,
    imo_bin_edges,
    imo_overlap,
    overlap_from_counts,
    pair_histograms,
)

__all__ = [
    "BottleneckAdapter",
    "IMOResult",
    "PairHistogramAccumulator",
    "adapter_checkpoint_sha256",
    "adapter_state_dict",
    "adapters_enabled",
    "attach_adapter_checkpoint",
    "checkpoint_paths",
    "count_adapter_parameters",
    "find_adapters",
    "imo_bin_edges",
    "imo_overlap",
    "insert_adapters",
    "load_adapter_checkpoint",
    "overlap_from_counts",
    "pair_histograms",
    "remove_adapters",
    "save_adapter_checkpoint",
    "set_adapters_enabled",
]
