"""`emoji-market`: a real multilingual, multimodal product catalog built from product-like emoji.

Each product is one fully-qualified emoji from the Unicode groups that hold goods (Objects, Food & Drink,
Activities), with human-written names in the 14 languages of the `emoji` package, one catalog row per
product x market, a category from the Unicode group/subgroup, and a colour image rendered from Noto Color
Emoji. Product launch times are simulated (most products exist from the start, some arrive later) so
that cold-start protocols have new items; they are part of the shopper SIMULATION, not of the catalog.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from tqdm.auto import tqdm

from mmrec.errors import UserError
from mmrec.data.schema import ITEM_FEATURES

log = logging.getLogger(__name__)

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")  # Debian `unicode-data`
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")  # Debian `fonts-noto-color-emoji`
PRODUCT_GROUPS = ("Objects", "Food & Drink", "Activities")
# The 14 languages of the `emoji` package and the market (storefront country) each one stands for.
MARKETS: dict[str, str] = {
    "en": "US", "ar": "SA", "de": "DE", "es": "ES", "fa": "IR", "fr": "FR", "id": "ID",
    "it": "IT", "ja": "JP", "ko": "KR", "pt": "BR", "ru": "RU", "tr": "TR", "zh": "CN",
}
LANGUAGES: tuple[str, ...] = tuple(MARKETS)
SKIN_TONES = {"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"}


@dataclass(frozen=True)
class Product:
    product_id: str
    char: str
    group: str
    subgroup: str
    names: dict[str, str]


def _parse_emoji_test(path: Path = EMOJI_TEST) -> list[tuple[str, str, str, str]]:
    """(codepoints, char, group, subgroup) of fully-qualified emoji in the product groups."""
    if not path.exists():
        raise UserError(f"{path} is missing: install the Debian package `unicode-data` (make setup does it as root)")
    group = subgroup = ""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and group in PRODUCT_GROUPS:
            codes, rest = line.split(";", 1)
            status, comment = rest.split("#", 1)
            points = codes.split()
            if status.strip() != "fully-qualified" or SKIN_TONES & set(points):
                continue
            rows.append(("-".join(p.lower() for p in points), comment.split()[0], group, subgroup))
    return rows


def _clean_name(raw: str) -> str:
    return raw.strip(":").replace("_", " ").strip()


def products() -> tuple[list[Product], int]:
    """The product-like emoji that have a name in all 14 languages, and how many were skipped for lacking one."""
    import emoji

    emoji.config.load_language(list(LANGUAGES))
    out, skipped = [], 0
    for codes, char, group, subgroup in _parse_emoji_test():
        data = emoji.EMOJI_DATA.get(char)
        names = {lang: _clean_name(data[lang]) for lang in LANGUAGES if data and data.get(lang)}
        if len(names) < len(LANGUAGES):
            skipped += 1
            continue
        out.append(Product(f"emoji:{codes}", char, group, subgroup, names))
    return out, skipped


def render(char: str, path: Path, font) -> None:
    """Render one emoji as a 128x128 RGB PNG on white (Noto Color Emoji only draws at size 109)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGBA", (136, 128), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"blank render for {char!r}")
    white = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, canvas).convert("RGB").crop(box)
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
    square.resize((128, 128), Image.LANCZOS).save(path, format="PNG")


def launch_times(n: int, start: int, span_s: int, new_share: float, seed: int) -> np.ndarray:
    """Simulated product launch times: (1 - new_share) exist at `start`, the rest arrive uniformly later."""
    rng = np.random.default_rng(seed)
    times = np.full(n, start, dtype=np.int64)
    late = rng.random(n) < new_share
    times[late] = start + (rng.random(late.sum()) * 0.9 * span_s).astype(np.int64)
    return times


def build_items(image_dir: Path, created_at: np.ndarray | None = None) -> tuple[datasets.Dataset, dict]:
    """The catalog rows, rendering images into `image_dir`; returns (items, build report)."""
    prods, skipped = products()
    font = None
    if EMOJI_FONT.exists():
        from PIL import ImageFont

        font = ImageFont.truetype(str(EMOJI_FONT), 109)
    else:
        log.warning("%s is missing (Debian `fonts-noto-color-emoji`): building emoji-market without images",
                    EMOJI_FONT)
    image_dir.mkdir(parents=True, exist_ok=True)
    rows, failed = [], 0
    for i, prod in enumerate(tqdm(prods, desc="emoji-market: rendering", unit="img", disable=font is None)):
        image_path = None
        if font is not None:
            path = image_dir / f"{prod.product_id.split(':')[1]}.png"
            try:
                if not path.exists():
                    render(prod.char, path, font)
                image_path = str(path)
            except (OSError, ValueError) as exc:
                failed += 1
                log.warning("could not render %s: %s", prod.product_id, exc)
        for lang in LANGUAGES:
            rows.append({
                "item_id": f"{prod.product_id}:{lang}",
                "product_id": prod.product_id,
                "title": prod.names[lang],
                "description": None,
                "language": lang,
                "market": MARKETS[lang],
                "category": f"{prod.group}/{prod.subgroup}",
                "image_path": image_path,
                "price": None,
                "attributes": json.dumps({"emoji": prod.char}, ensure_ascii=False),
                "created_at": None if created_at is None else int(created_at[i]),
            })
    report = {"products": len(prods), "skipped_without_all_names": skipped, "render_failures": failed,
              "images": font is not None}
    return datasets.Dataset.from_list(rows, features=ITEM_FEATURES), report
