"""Architectures shipped as data: JSON configs under `model_configs/`, registered with open_clip on import.

`clipadapt-test-tiny-vit` and `clipadapt-test-tiny-rn` are tiny randomly initialised CLIP models (a few layers,
32×32 images) for tests and benchmarks; they have no pretrained weights. `clipadapt-test-tiny-siglip` is the same
for SigLIP's open_clip layout: a timm ViT tower (`test_vit`, attention-pool head), a bidirectional text tower
pooled on the last token, a learned logit bias (−10) and scale (10), and a Hugging Face tokenizer — a word-level
`tokenizers` tokenizer of 16 words shipped in `model_configs/tokenizers/` (built by tests/_hf_models.tokenizer()),
so it loads offline. A config's `text_cfg.hf_tokenizer_name` that starts with `./` names such a directory next to
the configs; any other name is a hub repo, read from the HF hub cache (transformers: the `[hf]` extra).
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "model_configs"
TEST_MODELS = ("clipadapt-test-tiny-vit", "clipadapt-test-tiny-rn", "clipadapt-test-tiny-siglip")

_registered = False


def register_model_configs() -> None:
    """Add clipadapt's architecture configs to open_clip's registry (idempotent)."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    from open_clip.factory import _MODEL_CONFIGS

    for path in CONFIG_DIR.glob("*.json"):  # './dir' tokenizer names: directories shipped next to the configs
        text_cfg = _MODEL_CONFIGS.get(path.stem, {}).get("text_cfg", {})
        name = text_cfg.get("hf_tokenizer_name")
        if isinstance(name, str) and name.startswith("./"):
            text_cfg["hf_tokenizer_name"] = str((CONFIG_DIR / name).resolve())
    _registered = True
