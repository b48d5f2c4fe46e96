"""CLDR emoji annotations (Debian `unicode-cldr-core`): every emoji's short name in ~100 languages.

Why: emoji-market's titles come in the 14 languages of the `emoji` package; CLDR names the same emoji in
many more, so the products can be named (and text encoders tuned and measured) in languages outside the
catalog. `<annotation cp="…" type="tts">` is the short name; the other `<annotation cp="…">` holds keywords
separated by `|`. CLDR writes code points without U+FE0F, so look emoji up through `cldr_key`.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from mmrec.errors import UserError

ANNOTATIONS = Path("/usr/share/unicode/cldr/common/annotations")  # Debian `unicode-cldr-core`
DEBIAN_PACKAGE = "unicode-cldr-core"


@dataclass(frozen=True)
class Annotations:
    """One locale's names (`tts`) and keyword lists, keyed by `cldr_key(emoji)`."""

    language: str
    names: dict[str, str] = field(default_factory=dict)
    keywords: dict[str, tuple[str, ...]] = field(default_factory=dict)


def cldr_key(char: str) -> str:
    """The form CLDR annotations use for an emoji: without variation selector 16 (U+FE0F)."""
    return char.replace("\ufe0f", "")


def available_languages(root: Path = ANNOTATIONS) -> list[str]:
    """Base locales with annotation files (regional/script variants such as `es_419` or `sr_Latn` left out:
    they only hold differences from their parent)."""
    if not root.is_dir():
        raise UserError(f"{root} is missing: install the Debian package `{DEBIAN_PACKAGE}` (make setup does it as root)")
    return sorted(p.stem for p in root.glob("*.xml") if "_" not in p.stem and p.stem != "root")


@lru_cache(maxsize=None)
def load_annotations(language: str, root: Path = ANNOTATIONS) -> Annotations:
    """The names and keywords CLDR gives in `language` (an annotation file's stem, e.g. "hi")."""
    path = root / f"{language}.xml"
    if not path.exists():
        raise UserError(f"no CLDR annotations for {language!r} in {root} (Debian `{DEBIAN_PACKAGE}`)")
    names: dict[str, str] = {}
    keywords: dict[str, tuple[str, ...]] = {}
    for node in ET.parse(path).getroot().iter("annotation"):
        cp, text = node.get("cp"), (node.text or "").strip()
        if not cp or not text or text == "↑↑↑":  # "↑↑↑" marks an entry inherited from the parent locale
            continue
        if node.get("type") == "tts":
            names[cp] = text
        else:
            keywords[cp] = tuple(k.strip() for k in text.split("|") if k.strip())
    return Annotations(language, names, keywords)


def names_by_emoji(languages: list[str] | None = None, root: Path = ANNOTATIONS) -> dict[str, dict[str, str]]:
    """cldr_key(emoji) -> language -> short name, over `languages` (default: every base locale)."""
    out: dict[str, dict[str, str]] = {}
    for lang in languages or available_languages(root):
        for key, name in load_annotations(lang, root).names.items():
            out.setdefault(key, {})[lang] = name
    return out
