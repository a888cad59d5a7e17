"""GPU edge throughput: an SD 2.1-architecture pipeline (random weights, same compute as the real
model) at 512×512, 25 steps, fp16, served through `EdgeBackend`: one request at a time, micro-batched,
and with `torch.compile` on the UNet. Runs only where CUDA exists.

    PYTHONPATH=. python bench/gpu_edge.py --markdown docs/gpu_edge.md

Random weights give noise images, but every layer runs exactly as in the real checkpoint, so
images/s is the real model's. The card's name goes next to each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import torch

from backends.base import GenerationRequest
from backends.edge import EdgeBackend
from demo.tiny import build_clip_tokenizer, sd_ddim_scheduler
from router_model.lab.markdown import table

SIZE, STEPS = 512, 25


def build_sd21_architecture(dtype: torch.dtype, device: str):
    """StableDiffusionPipeline with stabilityai/stable-diffusion-2-1's configs and random weights."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_clip_tokenizer("/tmp/sd21_tokenizer")
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=96,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            attention_head_dim=(5, 10, 20, 20),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=1024,
            use_linear_projection=True,
            upcast_attention=True,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            layers_per_block=2,
            sample_size=768,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=1024,
                intermediate_size=4096,
                num_attention_heads=16,
                num_hidden_layers=23,
                max_position_embeddings=77,
                vocab_size=49408,
                hidden_act="gelu",
                projection_dim=512,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = sd_ddim_scheduler(prediction_type="v_prediction")
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe = pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


async def images_per_second(backend: EdgeBackend, requests: int, concurrent: bool) -> float:
    def req(i: int) -> GenerationRequest:
        return GenerationRequest(
            prompt=f"a photo of object {i}", width=SIZE, height=SIZE, num_inference_steps=STEPS, seed=i
        )

    torch.cuda.synchronize()
    started = time.perf_counter()
    if concurrent:
        await asyncio.gather(*(backend.generate(req(i)) for i in range(requests)))
    else:
        for i in range(requests):
            await backend.generate(req(i))
    torch.cuda.synchronize()
    return requests / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> dict:
    card = torch.cuda.get_device_name(0)
    pipe = build_sd21_architecture(torch.float16, "cuda")
    rows = []

    async def measure(label: str, max_batch: int, requests: int, concurrent: bool) -> None:
        backend = EdgeBackend(
            "sd21-architecture-random", pipeline=pipe, max_batch=max_batch, max_queue=64, default_steps=STEPS
        )
        warm_up = [
            backend.generate(GenerationRequest(prompt="warm-up", width=SIZE, height=SIZE, num_inference_steps=STEPS))
            for _ in range(max_batch)
        ]
        await asyncio.gather(*warm_up)  # a full batch, so torch.compile sees the batch shape before timing
        rate = await images_per_second(backend, requests, concurrent)
        await backend.aclose()
        rows.append({"mode": label, "max_batch": max_batch, "requests": requests, "images_per_s": rate, "card": card})
        print(f"{label:<40} {rate:6.2f} images/s  ({card})", flush=True)

    await measure("one at a time", 1, args.requests, concurrent=False)
    await measure("micro-batched (max_batch 4)", 4, 2 * args.requests, concurrent=True)
    await measure("micro-batched (max_batch 8)", 8, 2 * args.requests, concurrent=True)
    started = time.perf_counter()
    pipe.unet = torch.compile(pipe.unet)
    await measure("torch.compile, one at a time", 1, args.requests, concurrent=False)
    compile_s = time.perf_counter() - started
    await measure("torch.compile, micro-batched (max_batch 4)", 4, 2 * args.requests, concurrent=True)
    return {
        "card": card,
        "size": SIZE,
        "steps": STEPS,
        "dtype": "float16",
        "compile_and_first_run_s": compile_s,
        "torch": torch.__version__,
        "rows": rows,
    }


def to_markdown(result: dict) -> str:
    base = result["rows"][0]["images_per_s"]
    lines = [
        f"SD 2.1 architecture (random weights), {result['size']}×{result['size']}, {result['steps']} steps, "
        f"{result['dtype']}, torch {result['torch']}, through `EdgeBackend`.",
        "",
        table(
            ["mode", "requests", "images/s", "vs one at a time", "card"],
            [
                [r["mode"], r["requests"], f"{r['images_per_s']:.2f}", f"{r['images_per_s'] / base:.2f}×", r["card"]]
                for r in result["rows"]
            ],
            align="lrrrl",
        ),
        "",
    ]
    lines.append(f"torch.compile: {result['compile_and_first_run_s']:.0f} s for compilation plus the first timed run.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_edge.py needs a CUDA GPU; run it on a GPU host (it is not part of CI)")
    result = asyncio.run(main(args))
    table = to_markdown(result)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
