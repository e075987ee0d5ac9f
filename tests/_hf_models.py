"""Tiny random Hugging Face `transformers` dual encoders saved with save_pretrained, for the hf: backend tests.

Nothing is downloaded: the tokenizer is a word-level `tokenizers` tokenizer built here (a handful of words) and
saved next to the model as a PreTrainedTokenizerFast; the image processors are CLIP's / SigLIP's with a 32-pixel
input. `build(root)` writes root/clip (CLIPModel), root/siglip (SiglipModel, logit scale 10 and bias −10) and
root/siglip2 (Siglip2Model, NaFlex with 16 patches of 8 pixels).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>"] + "a photo of the red green blue thing dog cat".split()
CONTEXT = 16
TEXT = dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=CONTEXT, bos_token_id=1, eos_token_id=2, pad_token_id=0)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
              patch_size=8)


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>",
                                                       special_tokens=[("<bos>", 1), ("<eos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def build(root: Path) -> dict[str, Path]:
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        Siglip2Config,
        Siglip2ImageProcessor,
        Siglip2Model,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    root = Path(root)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip = CLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=24)).eval()
        siglip = SiglipModel(SiglipConfig(text_config=TEXT, vision_config=VISION)).eval()
        siglip2 = Siglip2Model(Siglip2Config(text_config=TEXT, vision_config={**VISION, "num_patches": 16})).eval()
    for model in (siglip, siglip2):
        with torch.no_grad():
            model.logit_scale.fill_(math.log(10.0))
            model.logit_bias.fill_(-10.0)
    processors = {
        "clip": CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        "siglip": SiglipImageProcessor(size={"height": 32, "width": 32}),
        "siglip2": Siglip2ImageProcessor(patch_size=8, max_num_patches=16),
    }
    out = {}
    for name, model in (("clip", clip), ("siglip", siglip), ("siglip2", siglip2)):
        out[name] = root / name
        model.save_pretrained(out[name])
        tokenizer().save_pretrained(out[name])
        processors[name].save_pretrained(out[name])
    return out
