"""Tiny random diffusers pipelines and CLIP models, built offline from configs.

They have the real architectures (SD 2.1-class UNet pipeline, SD3 MMDiT pipeline, CLIP) at toy
sizes with random weights, saved with `save_pretrained` so callers load them through the very same
`from_pretrained` path as real checkpoints. Used by demo mode and the tests; the images are noise.
Sizes follow diffusers' own pipeline tests.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_TEXT_DIM = 32


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by GPT-2/CLIP byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def build_clip_tokenizer(directory: str | Path, model_max_length: int = 77):
    """A real `CLIPTokenizer` with a byte-level vocabulary and no merges (every character is a token)."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = _byte_level_alphabet()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(
        vocab={tok: i for i, tok in enumerate(tokens)}, merges=[], model_max_length=model_max_length
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


def _clip_text_config(tokenizer, **overrides):
    from transformers import CLIPTextConfig

    kwargs = dict(
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=TINY_TEXT_DIM,
        layer_norm_eps=1e-5,
    )
    kwargs.update(overrides)
    return CLIPTextConfig(**kwargs)


def _tiny_vae(**overrides):
    """A 4-level VAE (8× downsampling, like the real ones), so a 512×512 request runs on 64×64 latents."""
    from diffusers import AutoencoderKL

    levels = 4
    kwargs = dict(
        block_out_channels=(4, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        norm_num_groups=2,
    )  # fmt: skip
    kwargs.update(overrides)
    return AutoencoderKL(**kwargs)


def sd_ddim_scheduler(**overrides):
    """The DDIM scheduler settings of Stable Diffusion 1.x/2.x (2.1 adds prediction_type="v_prediction")."""
    from diffusers import DDIMScheduler

    kwargs = dict(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    return DDIMScheduler(**(kwargs | overrides))


def build_tiny_sd_pipeline(directory: str | Path, seed: int = 0) -> Path:
    """An SD 2.1-class `StableDiffusionPipeline` (UNet + VAE + CLIP text encoder), saved to `directory`."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    directory = Path(directory)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(directory / "_tokenizer")
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_TEXT_DIM,
        norm_num_groups=2,
        attention_head_dim=2,
    )
    vae = _tiny_vae()
    scheduler = sd_ddim_scheduler()
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        scheduler=scheduler,
        text_encoder=CLIPTextModel(_clip_text_config(tokenizer)),
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory)
    return directory


def build_tiny_sd3_pipeline(directory: str | Path, seed: int = 0) -> Path:
    """An SD3-class `StableDiffusion3Pipeline` (MMDiT + two CLIP encoders, no T5), saved to `directory`."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    directory = Path(directory)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(directory / "_tokenizer")
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=2 * TINY_TEXT_DIM,
        pooled_projection_dim=2 * TINY_TEXT_DIM,
        out_channels=4,
    )
    vae = _tiny_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=CLIPTextModelWithProjection(_clip_text_config(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_clip_text_config(tokenizer)),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.save_pretrained(directory)
    return directory


def build_tiny_clip(directory: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A tiny random `CLIPModel` with its processor (tokenizer + image processor), saved to `directory`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    directory = Path(directory)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(directory / "_tokenizer")
    vision = CLIPVisionConfig(
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=image_size,
        patch_size=8,
        projection_dim=TINY_TEXT_DIM,
    )
    config = CLIPConfig(
        text_config=_clip_text_config(tokenizer).to_dict(), vision_config=vision.to_dict(), projection_dim=TINY_TEXT_DIM
    )
    CLIPModel(config).save_pretrained(directory)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory
