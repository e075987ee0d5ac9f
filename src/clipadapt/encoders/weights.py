"""Where a model's weights and preprocessing come from, without loading the model.

Offline policy (docs/encoders-and-cache.md):
1. weights already on disk (HF hub cache, open_clip's URL cache `~/.cache/clip`, a local checkpoint) are loaded
   from there with the hub in offline mode: no network request at all;
2. otherwise, when downloads are allowed, a quick connect probe (a few seconds) decides whether open_clip may
   download; if the host is unreachable we fail at once instead of letting hf_hub retry for a minute;
3. downloads are forbidden by `CLIPADAPT_OFFLINE=1` or `HF_HUB_OFFLINE=1` (and `CLIPADAPT_ALLOW_DOWNLOAD=0`).
`CLIPADAPT_WEIGHTS_DIR` overrides the download/cache directory given to open_clip and the hub.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from clipadapt.encoders.ids import ModelId
from clipadapt.errors import WeightsUnavailableError
from clipadapt.fileio import file_sha256 as sha256_of_file

HF_HOST = ("huggingface.co", 443)
RANDOM_INIT_SEED = 0  # the torch seed `clipadapt-test-*` models are initialised with (part of their identity)
PROBE_TIMEOUT_S = 3.0
HF_CONFIG_NAME = "open_clip_config.json"
_TRUE = {"1", "true", "yes", "on"}
_hash_memo: dict[tuple[str, int, int], str] = {}


# ----------------------------------------------------------------------------------------- policy
def weights_dir() -> str | None:
    """Download/cache directory for weights (None = open_clip and hub defaults)."""
    return os.environ.get("CLIPADAPT_WEIGHTS_DIR") or None


def hf_cache_home() -> str:
    """The Hugging Face cache as error messages name it: $HF_HUB_CACHE, else $HF_HOME, else its default."""
    return os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"


def downloads_allowed() -> tuple[bool, str]:
    """(allowed, reason when not) from the environment."""
    for var in ("CLIPADAPT_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return False, f"downloads are disabled ({var}=1)"
    if os.environ.get("CLIPADAPT_ALLOW_DOWNLOAD", "").strip().lower() in {"0", "false", "no", "off"}:
        return False, "downloads are disabled (CLIPADAPT_ALLOW_DOWNLOAD=0)"
    return True, ""


def host_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when an HTTPS request to host:port gets any HTTP answer within `timeout` s.

    A bare TCP connect is not enough: sandboxes and proxies accept every connection and then stall, which is
    exactly when hf_hub would retry for a minute. DNS, connect, TLS and the answer all count toward the
    timeout (the probe runs in a daemon thread).
    """
    import urllib.error
    import urllib.request

    result: list[bool] = []

    def probe() -> None:
        request = urllib.request.Request(f"https://{host}:{port}/", method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                result.append(True)
        except urllib.error.HTTPError:
            result.append(True)  # the server answered (e.g. 404): the network works
        except Exception:  # noqa: BLE001 - DNS, refused, TLS, timeout: unreachable
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Offline mode for huggingface_hub (it reads the flag at import, so patch it) and, through the environment,
    for libraries that check it when called (transformers tokenizers); restored afterwards."""
    saved_env = {var: os.environ.get(var) for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({var: "1" for var in saved_env})
    try:
        from huggingface_hub import constants
    except ImportError:
        constants = None
    old = constants.HF_HUB_OFFLINE if constants is not None else None
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = old
        for var, value in saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


# ----------------------------------------------------------------------------------------- hashing
def file_sha256(path: Path) -> str:
    """sha256 of a file's content (memoised per path, size and mtime within the process)."""
    path = Path(path)
    stat = path.stat()
    memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _hash_memo:
        _hash_memo[memo_key] = sha256_of_file(path)
    return _hash_memo[memo_key]


# ----------------------------------------------------------------------------------------- locating weights
def hf_cached(repo: str, filename: str, revision: str | None = None) -> Path | None:
    """`filename` of hub repo `repo` (at `revision`, default its main branch) in the HF hub cache, else None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, filename, revision=revision, cache_dir=weights_dir())
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _hf_weight_candidates(filename: str | None) -> list[str]:
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def _tag_sources(arch: str, tag: str) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """The tag's open_clip config and its download sources as (kind, where, filename)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    sources = []
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])  # 'org/repo/' or 'org/repo/file.bin', as open_clip splits it
        sources.extend(("hf", repo, name) for name in _hf_weight_candidates(filename or None))
    if cfg.get("url"):
        sources.append(("url", cfg["url"], os.path.basename(urlparse(cfg["url"]).path)))
    if cfg.get("file"):
        sources.append(("file", cfg["file"], os.path.basename(cfg["file"])))
    return cfg, sources


def _locate(source: tuple[str, str, str]) -> Path | None:
    kind, where, filename = source
    if kind == "hf":
        return hf_cached(where, filename)
    if kind == "url":
        path = Path(weights_dir() or Path.home() / ".cache" / "clip") / filename
        return path if path.is_file() else None
    path = Path(where)
    return path if path.is_file() else None


def _describe(sources: list[tuple[str, str, str]]) -> str:
    parts = []
    for kind, where, filename in sources:
        if kind == "hf":
            parts.append(f"HF hub cache ({hf_cache_home()}) for {where}/{filename}")
        elif kind == "url":
            parts.append(f"{weights_dir() or '~/.cache/clip'}/{filename}")
        else:
            parts.append(where)
    return "; ".join(parts)


def _unavailable(model_id: ModelId, looked: str, reason: str) -> WeightsUnavailableError:
    arch = model_id.arch or "ARCH"
    return WeightsUnavailableError(
        f"no weights for model '{model_id}' on this machine (looked in: {looked}) and {reason}. "
        f"To provide weights: download them once on a machine with network (they land in the HF hub cache; "
        f"copy that cache here or point HF_HOME / CLIPADAPT_WEIGHTS_DIR at it), or pass a local checkpoint "
        f"as '{arch}@/path/to/weights.pt' (or a local open_clip directory via hf-hub cache layout)."
    )


def download_blocked(hosts: set[tuple[str, int]]) -> str | None:
    """Why a download cannot be attempted — the environment forbids it (`downloads_allowed`) or none of `hosts`
    answers the quick probe — else None (also when CLIPADAPT_ALLOW_DOWNLOAD=1 insists: no probe then)."""
    allowed, reason = downloads_allowed()
    if not allowed:
        return reason
    if os.environ.get("CLIPADAPT_ALLOW_DOWNLOAD", "").strip().lower() in _TRUE:
        return None
    if any(host_reachable(h, p) for h, p in hosts if h):
        return None
    return f"{', '.join(sorted(h for h, _ in hosts if h)) or 'the download host'} cannot be reached (no network?)"


def _download_check(model_id: ModelId, sources: list[tuple[str, str, str]]) -> None:
    """Raise WeightsUnavailableError fast unless a download can be attempted."""
    hosts = {HF_HOST if kind == "hf" else (urlparse(where).hostname or "", 443) for kind, where, _ in sources
             if kind != "file"}
    reason = download_blocked(hosts)
    if reason is not None:
        raise _unavailable(model_id, _describe(sources), reason)


def resolve_weights(model_id: ModelId) -> dict[str, Any]:
    """How to load the weights: {'local': Path | None, 'tag_cfg': dict, 'download': bool}.

    Raises WeightsUnavailableError within seconds when nothing is local and nothing can be downloaded.
    """
    if model_id.kind == "random-init":
        return {"local": None, "tag_cfg": {}, "download": False}
    if model_id.kind == "checkpoint":
        return {"local": model_id.checkpoint, "tag_cfg": {}, "download": False}
    if model_id.kind == "hf-hub":
        config = hf_cached(model_id.hf_hub, HF_CONFIG_NAME)
        weights = next((p for n in _hf_weight_candidates(None) if (p := hf_cached(model_id.hf_hub, n))), None)
        if config is not None and weights is not None:
            return {"local": weights.parent, "tag_cfg": {}, "download": False}
        sources = [("hf", model_id.hf_hub, HF_CONFIG_NAME)] + [
            ("hf", model_id.hf_hub, n) for n in _hf_weight_candidates(None)]
        _download_check(model_id, sources)
        return {"local": None, "tag_cfg": {}, "download": True}
    cfg, sources = _tag_sources(model_id.arch, model_id.tag)
    for source in sources:
        found = _locate(source)
        if found is not None:
            return {"local": found, "tag_cfg": cfg, "download": False}
    _download_check(model_id, sources)
    return {"local": None, "tag_cfg": cfg, "download": True}


# ----------------------------------------------------------------------------------------- static fingerprint
def _hf_hub_config(model_id: ModelId) -> dict[str, Any]:
    path = hf_cached(model_id.hf_hub, HF_CONFIG_NAME)
    if path is None:
        resolve_weights(model_id)  # raises fast when offline
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(model_id.hf_hub, HF_CONFIG_NAME, cache_dir=weights_dir()))
    return json.loads(Path(path).read_text())


def static_preprocess(model_id: ModelId) -> dict[str, Any]:
    """The eval preprocessing open_clip will use for this id, computed without building the model."""
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = asdict(PreprocessCfg())
    if model_id.kind == "hf-hub":
        hub = _hf_hub_config(model_id)
        cfg = merge_preprocess_dict(cfg, hub.get("preprocess_cfg", {}))
        size = hub["model_cfg"]["vision_cfg"].get("image_size", cfg["size"])
    else:
        model_cfg = open_clip.get_model_config(model_id.arch) or {}
        if model_id.kind == "tag":
            cfg = merge_preprocess_dict(cfg, open_clip.get_pretrained_cfg(model_id.arch, model_id.tag))
        size = model_cfg.get("vision_cfg", {}).get("image_size", cfg["size"])
    cfg["size"] = size
    return canonical_preprocess(cfg)


def canonical_preprocess(cfg: dict[str, Any]) -> dict[str, Any]:
    """Preprocessing config as canonical JSON values: size always [H, W], tuples as lists."""
    cfg = dict(cfg)
    size = cfg.get("size")
    cfg["size"] = [int(size), int(size)] if isinstance(size, (int, float)) else [int(s) for s in size]
    return json.loads(json.dumps(cfg))


def needs_quick_gelu(model_id: ModelId) -> bool:
    """Tags trained with QuickGELU (e.g. OpenAI's) need it forced on the plain architecture config."""
    import open_clip

    if model_id.kind != "tag":
        return False
    model_cfg = open_clip.get_model_config(model_id.arch) or {}
    return bool(open_clip.get_pretrained_cfg(model_id.arch,
                                             model_id.tag).get("quick_gelu")) and not model_cfg.get("quick_gelu")


def weights_fingerprint(model_id: ModelId) -> dict[str, Any]:
    """What identifies the weights: the tag, the checkpoint's sha256, the hub repo, or the random-init seed."""
    if model_id.kind == "checkpoint":
        return {"kind": "checkpoint", "sha256": file_sha256(model_id.checkpoint)}
    if model_id.kind == "hf-hub":
        return {"kind": "hf-hub", "id": model_id.hf_hub}
    if model_id.kind == "tag":
        return {"kind": "tag", "tag": model_id.tag}
    import torch

    return {"kind": "random-init", "seed": RANDOM_INIT_SEED, "torch": torch.__version__.split("+")[0]}
