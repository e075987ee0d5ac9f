"""Model ids: `ARCH@TAG`, `ARCH@/path/to/checkpoint.pt`, `hf-hub:org/repo`, `hf:org/repo[@REVISION]`,
`hf:/path/to/dir`, or a bare `clipadapt-test-*` name.

Two Hugging Face spellings, two formats: `hf-hub:` is an **open_clip**-format hub repository (it has
`open_clip_config.json`, e.g. `hf-hub:timm/ViT-B-16-SigLIP`), loaded by open_clip; `hf:` is a **transformers**-format
model (`config.json` + `preprocessor_config.json`, e.g. `hf:openai/clip-vit-base-patch32`, `hf:google/siglip-base-
patch16-224`) from the hub or a local directory written by `save_pretrained`, loaded by `transformers`
(clipadapt.encoders.hf, the `[hf]` extra).

The id is the user-facing name of a backbone; `parse_model_id` validates it against open_clip's registries
(architectures and pretrained tags are data there) and returns its canonical form, used in cache keys and
results files.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from clipadapt.encoders.configs import register_model_configs
from clipadapt.errors import ConfigError

HF_HUB_PREFIX = "hf-hub:"
HF_PREFIX = "hf:"  # transformers-format models (clipadapt.encoders.hf)
TEST_MODEL_PREFIX = "clipadapt-test-"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


@dataclass(frozen=True)
class ModelId:
    """A parsed model id. Exactly one weights source is set, or none for a random-init test model."""

    arch: str | None = None  # open_clip architecture name (None for hf-hub ids: the config comes from the hub)
    tag: str | None = None  # open_clip pretrained tag, e.g. 'openai', 'laion2b_s34b_b79k'
    checkpoint: Path | None = None  # a local weights file
    hf_hub: str | None = None  # 'org/repo' on the Hugging Face hub
    transformers: str | None = None  # hf: a transformers-format hub repo 'org/repo', or a local directory's path
    revision: str | None = None  # hf:org/repo@REVISION (branch, tag or commit); None = the default branch
    hf_dir: Path | None = None  # hf:/path: the local directory (then `transformers` is its path as text)

    @property
    def kind(self) -> str:
        """'tag', 'checkpoint', 'hf-hub', 'transformers' or 'random-init'."""
        if self.transformers:
            return "transformers"
        if self.hf_hub:
            return "hf-hub"
        if self.checkpoint is not None:
            return "checkpoint"
        if self.tag:
            return "tag"
        return "random-init"

    @property
    def is_transformers(self) -> bool:
        return self.kind == "transformers"

    @property
    def open_clip_name(self) -> str:
        """The name open_clip's factory and tokenizer understand."""
        return f"{HF_HUB_PREFIX}{self.hf_hub}" if self.hf_hub else str(self.arch)

    def __str__(self) -> str:
        if self.transformers:
            return f"{HF_PREFIX}{self.transformers}" + (f"@{self.revision}" if self.revision else "")
        if self.hf_hub:
            return f"{HF_HUB_PREFIX}{self.hf_hub}"
        if self.checkpoint is not None:
            return f"{self.arch}@{self.checkpoint}"
        if self.tag:
            return f"{self.arch}@{self.tag}"
        return str(self.arch)


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.startswith(("~", ".")) or text.lower().endswith(CHECKPOINT_SUFFIXES)


def _check_arch(arch: str, model_id: str) -> None:
    import open_clip

    register_model_configs()
    models = open_clip.list_models()
    if arch not in models:
        close = difflib.get_close_matches(arch, models, n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else " Run `clipadapt models` for the list."
        raise ConfigError(f"model id '{model_id}': unknown architecture '{arch}'.{hint}")


def _check_tag(arch: str, tag: str, model_id: str) -> None:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        listed = ", ".join(tags) if tags else "none (use ARCH@/path/to/checkpoint.pt)"
        raise ConfigError(f"model id '{model_id}': '{tag}' is not a pretrained tag of {arch}; available: {listed}")


def _parse_transformers(text: str) -> ModelId:
    """hf:/path/to/dir (a save_pretrained directory) or hf:ORG/REPO[@REVISION] (a transformers-format hub repo)."""
    rest = text[len(HF_PREFIX):].strip()
    if not rest:
        raise ConfigError(
            f"model id '{text}': expected hf:ORG/REPO (e.g. hf:openai/clip-vit-base-patch32) or hf:/path/to/dir"
        )
    candidate = Path(rest).expanduser()
    if rest.startswith(("/", ".", "~", "\\")) or (len(rest) > 1 and rest[1] == ":") or candidate.is_dir():
        directory = candidate.resolve()
        if not (directory / "config.json").is_file():
            raise ConfigError(
                f"model id '{text}': {directory} is not a transformers model directory (no config.json); write one "
                "with model.save_pretrained(DIR) and processor.save_pretrained(DIR)"
            )
        return ModelId(transformers=str(directory), hf_dir=directory)
    repo, _, revision = rest.partition("@")
    repo = repo.strip("/")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(f"model id '{text}': expected hf:ORG/REPO[@REVISION], e.g. hf:openai/clip-vit-base-patch32, "
                          "or hf:/path/to/dir (hf-hub:ORG/REPO is for open_clip-format repositories)")
    return ModelId(transformers=repo, revision=revision.strip() or None)


def parse_model_id(model_id: str) -> ModelId:
    """Parse and validate a model id; raises ConfigError naming the id and what is accepted."""
    text = str(model_id).strip()
    if not text:
        raise ConfigError("empty model id; expected ARCH@TAG, e.g. ViT-B-32@openai")
    if text.startswith(HF_HUB_PREFIX):
        repo = text[len(HF_HUB_PREFIX):].strip("/")
        if repo.count("/") != 1:
            raise ConfigError(f"model id '{text}': expected hf-hub:ORG/REPO, e.g. hf-hub:timm/ViT-B-16-SigLIP")
        return ModelId(hf_hub=repo)
    if text.startswith(HF_PREFIX):
        return _parse_transformers(text)
    arch, sep, source = text.partition("@")
    arch = arch.strip().replace("/", "-")  # open_clip spells ViT-B/32 as ViT-B-32
    if not arch:
        raise ConfigError(f"model id '{text}': missing architecture before '@' (e.g. ViT-B-32@openai)")
    _check_arch(arch, text)
    if not sep or not source:
        if arch.startswith(TEST_MODEL_PREFIX):
            return ModelId(arch=arch)
        raise ConfigError(
            f"model id '{text}' has no weights: use ARCH@TAG (e.g. {arch}@openai; `clipadapt models` lists tags) "
            f"or ARCH@/path/to/checkpoint.pt; random initialisation is only allowed for '{TEST_MODEL_PREFIX}*' models"
        )
    if _looks_like_path(source):
        path = Path(source).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"model id '{text}': checkpoint file {path} not found")
        return ModelId(arch=arch, checkpoint=path)
    tag = source.lower().replace("-", "_")  # open_clip's own tag normalisation
    _check_tag(arch, tag, text)
    return ModelId(arch=arch, tag=tag)
