"""`clipadapt search`: chunked top-k retrieval of feature-directory rows, from memory-mapped (sharded) splits."""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from clipadapt.argtypes import COUNT
from clipadapt.cli._common import add_verify_argument
from clipadapt.cli._conventions import add_out_argument, path_provenance, results_path, write_results
from clipadapt.cli._outputs import FILE, output_option
from clipadapt.constants import TOPK_BACKENDS as BACKENDS
from clipadapt.errors import ClipadaptError, ConfigError, FeatureDirError

if TYPE_CHECKING:  # torch-backed: imported where used, so building the parser stays torch-free
    import torch

    from clipadapt.features.shards import ShardedSplit

COMMAND = "search"
HELP = "top-k nearest rows of a gallery split for each query (chunked, memory-mapped; optional faiss)"
EXAMPLES = """
clipadapt search --queries feats/:test --gallery pool/:train --k 10 --out runs/search
clipadapt search --queries coco/:text --gallery coco/:test --paired --k 10 --backend faiss --out runs/coco
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queries", required=True, metavar="DIR:SPLIT",
                        help="query embeddings: a feature directory (or builtin:coco500) and a split name, or DIR:text for the class texts")
    parser.add_argument("--gallery", required=True, metavar="DIR:SPLIT", help="gallery embeddings, same form")
    parser.add_argument("--k", type=COUNT, default=10, help="neighbours per query")
    parser.add_argument("--chunk-size", type=COUNT, default=4096, help="gallery rows scored at once")
    parser.add_argument("--query-chunk-size", type=COUNT, default=1024, help="query rows scored at once")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="torch: exact chunked running top-k; faiss: a faiss index (pip install 'clipadapt[faiss]')")
    parser.add_argument("--faiss-index", default="Flat",
                        help="faiss index factory string (default Flat = exact inner product; e.g. IVF4096,Flat)")
    parser.add_argument("--no-normalize", action="store_true", help="score raw inner products instead of cosines")
    parser.add_argument("--paired", action="store_true",
                        help="query row i matches gallery row i: report recall@1/5/10")
    add_verify_argument(parser)
    add_out_argument(parser, legacy_json=True)
    output_option(parser.add_argument("--save-topk", type=Path,
                                      help="write indices (Q, k) and scores (Q, k) as .npz"), FILE)


def _open(spec: str) -> tuple[str, ShardedSplit | torch.Tensor]:
    """DIR:SPLIT -> a memory-mapped split (sharded index if there is one, else the split file); DIR:text -> W rows."""
    from clipadapt.builtin import resolve_dir
    from clipadapt.features.checksums import check_checksums
    from clipadapt.features.io import load_text, read_meta
    from clipadapt.features.shards import ShardedSplit, index_path

    directory, sep, split = spec.rpartition(":")
    if not sep or not directory:
        raise ConfigError(f"'{spec}': expected DIR:SPLIT, e.g. feats/:test or feats/:text")
    directory = resolve_dir(directory)  # DIR may be builtin:NAME
    if directory.is_dir():
        check_checksums(directory)  # sizes; sha256 too with --verify
    if split == "text":
        return spec, load_text(directory, len(read_meta(directory)["classnames"]))
    if index_path(directory, split).is_file():
        return spec, ShardedSplit.open(index_path(directory, split))
    path = directory / f"{split}.safetensors"
    if not path.is_file():
        raise FeatureDirError(f"{path}: split '{split}' not found (no {path.name} and no {index_path(directory, split).name})")
    return spec, ShardedSplit([path], name=split)  # one file, still read memory-mapped chunk by chunk


def _chunks(source: ShardedSplit | torch.Tensor, rows: int, normalize: bool) -> Iterator[torch.Tensor]:
    import torch

    from clipadapt.ops import l2_normalize, pool_views

    if isinstance(source, torch.Tensor):
        chunks = (source[i : i + rows] for i in range(0, source.shape[0], rows))
    else:
        chunks = (image for image, _ in source.iter_chunks(rows))
    for chunk in chunks:
        x = pool_views(chunk.float())
        yield l2_normalize(x) if normalize else x


def _provenance(args: argparse.Namespace) -> dict:
    """Both directories (fingerprinted once when they are the same) and their meta.json models."""
    from clipadapt.features.io import read_meta

    dirs = {"queries": Path(args.queries.rpartition(":")[0]), "gallery": Path(args.gallery.rpartition(":")[0])}
    models = []
    for d in dict.fromkeys(dirs.values()):
        try:
            models.append(read_meta(d).get("model"))
        except (ClipadaptError, OSError):  # provenance never fails a finished run
            models.append(None)
    model = models[0] if len(set(models)) == 1 else models
    if dirs["queries"] == dirs["gallery"]:
        return path_provenance(args, {"features": dirs["queries"]}, model=model)
    return path_provenance(args, dirs, model=model)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from clipadapt.eval.topk import chunked_topk
    from clipadapt.fileio import atomic_write_bytes

    normalize = not args.no_normalize
    q_spec, q_src = _open(args.queries)
    g_spec, g_src = _open(args.gallery)
    queries = torch.cat(list(_chunks(q_src, args.chunk_size, normalize)))
    n_gallery = g_src.shape[0] if isinstance(g_src, torch.Tensor) else g_src.n
    start = time.perf_counter()
    opts = dict(chunk_size=args.chunk_size, query_chunk_size=args.query_chunk_size, backend=args.backend,
                faiss_index=args.faiss_index)
    scores, index = chunked_topk(queries, _chunks(g_src, args.chunk_size, normalize), args.k, **opts)
    results = {
        "queries": q_spec, "gallery": g_spec, "n_queries": int(queries.shape[0]), "n_gallery": int(n_gallery),
        "k": args.k, "backend": args.backend, "faiss_index": args.faiss_index if args.backend == "faiss" else None,
        "normalized": normalize, "chunk_size": args.chunk_size, "seconds": time.perf_counter() - start,
    }
    if args.paired:  # recall@k read off the top-k already computed
        if queries.shape[0] > n_gallery:
            raise ConfigError(f"--paired needs as many gallery rows as queries ({n_gallery} < {queries.shape[0]})")
        hit = index == torch.arange(queries.shape[0])[:, None]
        results["recall"] = {f"R@{k}": 100.0 * hit[:, :k].any(1).float().mean().item() for k in (1, 5, 10) if k <= args.k}
        print("  ".join(f"{name} {value:.2f}" for name, value in results["recall"].items()))
    print(f"top-{args.k} of {n_gallery} gallery rows for {queries.shape[0]} queries in {results['seconds']:.2f} s "
          f"({args.backend})")
    write_results(results_path(args.out), results, _provenance(args))
    if args.save_topk:
        buf = io.BytesIO()  # np.savez on a path would append '.npz' to a name without it
        np.savez(buf, indices=index.numpy(), scores=scores.float().numpy())
        atomic_write_bytes(args.save_topk, buf.getvalue())
        print(f"wrote {args.save_topk}")
    return 0
