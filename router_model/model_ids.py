"""Canonical text-to-image model ids and the aliases public rating sets use for them.

A rating file names models its own way (`SDXL_2_1` in GenAI-Bench is Stable Diffusion 2.1;
`xl2.2_normal` in AGIQA-3K is SDXL). `canonical_id(name, dataset)` maps a known alias to one id
shared across datasets; an unknown name stays scoped to its dataset (`<dataset>:<name>`) so two sets'
unrelated models never merge by accident.
"""

from __future__ import annotations

import re

# canonical id -> (aliases, release year): the year is a public fact, kept for reference only
# (leave-one-dataset-out did not test it as a feature).
CANONICAL: dict[str, tuple[tuple[str, ...], int]] = {
    "sd-1.4": (("SD1.4", "sd1.4", "stable-diffusion-v1-4", "sd_1_4"), 2022),
    "sd-1.5": (("SD1.5", "sd1.5", "sd1.5_normal", "sd1dot5", "stable_diffusion_v1_5", "stable-diffusion-v1-5"), 2022),
    "sd-2.1": (("SD2.1", "sd2.1", "SDXL_2_1", "stable-diffusion-2-1", "sdv2"), 2022),
    "sdxl": (("SDXL", "SDXL_Base", "xl2.2_normal", "sdxl-base", "stable-diffusion-xl-base-1.0"), 2023),
    "sdxl-turbo": (("SDXL_Turbo", "SDXL-Turbo", "sdxl_turbo"), 2023),
    "sd-turbo": (("SD-Turbo", "SD_Turbo", "sd_turbo"), 2023),
    "sd-3.5-large": (("SD3.5-Large", "sd3.5-large", "sd3.5_large", "stable-diffusion-3.5-large"), 2024),
    "sd-3.5-large-turbo": (("SD3.5-Large-Turbo", "sd3.5-large-turbo", "stable-diffusion-3.5-large-turbo"), 2024),
    "sd-3.5-medium": (("SD3.5-Medium", "sd3.5-medium", "stable-diffusion-3.5-medium"), 2024),
    "dall-e-2": (("DALLE2", "DALLE", "DALLE2_normal", "DALL-E 2", "dalle2"), 2022),
    "dall-e-3": (("DALLE_3", "DALLE3", "DALL-E 3", "dalle3"), 2023),
    "midjourney": (("MJ", "Midjourney_6", "midjourney_normal", "Midjourney"), 2022),
    "deepfloyd-if-xl": (("IF-XL", "IF", "DeepFloyd_I_XL_v1", "if-xl", "deepfloyd-if"), 2023),
    "glide": (("glide_normal", "Glide", "GLIDE"), 2021),
    "attngan": (("AttnGAN_normal", "AttnGAN"), 2018),
    "ssd-1b": (("SSD1B", "SSD-1B"), 2023),
    "pixart-alpha": (("Pixart", "PixArt-alpha"), 2023),
    "playground-v2": (("Playground",), 2023),
    "lcm-sd-1.5": (("LCM_SD1.5",), 2023),
    "lcm-sdxl": (("LCM_SDXL",), 2023),
    "lcm-pixart": (("LCM_Pixart",), 2023),
    "dreamshaper": (("Dream",), 2023),
}

# The gateway's pair by default: SD 2.1 on the edge, SD 3.5 Large in the cloud (the paper's setting).
DEFAULT_EDGE_ID = "sd-2.1"
DEFAULT_CLOUD_ID = "sd-3.5-large"

# Variants that share a base model's name but are not that model's normal output stay dataset-scoped
# (AGIQA-3K's `sd1.5_lowstep`, `midjourney_lowstep`, …): they are simply not aliases.


def _fold(name: str) -> str:
    return re.sub(r"\s+", " ", name.strip()).lower()


ALIASES: dict[str, str] = {}
for _cid, (_aliases, _year) in CANONICAL.items():
    ALIASES[_fold(_cid)] = _cid
    for _alias in _aliases:
        ALIASES[_fold(_alias)] = _cid


def canonical_id(name: str, dataset: str | None = None) -> str:
    """The canonical id of `name`, else `<dataset>:<name>` (or `name` itself when no dataset is given)."""
    found = ALIASES.get(_fold(name))
    if found is not None:
        return found
    if ":" in name or dataset is None:
        return name
    return f"{dataset}:{name}"


def is_canonical(model_id: str) -> bool:
    return model_id in CANONICAL


def release_year(model_id: str) -> int | None:
    entry = CANONICAL.get(model_id)
    return entry[1] if entry else None
