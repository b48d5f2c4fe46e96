"""The item recipe: the ONE definition of what an item's text and image are, before any encoder sees them.

`mmrec embed`, `POST /items`, the catalog store, training vectors and the demo all turn items into encoder
inputs here, so a model trained on one path is served on exactly the same vectors. The recipe's `id`
(version + fields) is part of the vector-space identity kept by the store and by checkpoints: changing
what goes into the text changes the space, and a checkpoint from the old space is refused.

    text  = "Title (alt title) (year). Description. Category words"   (the parts `fields` names, if present)
    image = the item's `image` (bytes / PIL / path) if given, else its `image_path`

Default fields: the title (with an original-language alt title and a year, where the catalog has them) and
the description, i.e. the listing's own words. The category is left out by default: in a multilingual
catalog it is usually one language's taxonomy on every listing (emoji-market: English Unicode groups), and
shared words make translations look alike because of the category, not the product (measured: it inflates
cross-lingual scores by matching the category). Add "category" for monolingual catalogs whose categories
carry meaning (ML-1M genres).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RECIPE_VERSION = 2  # bump when `ItemRecipe.text` changes what it makes of the same fields
FIELDS = ("title", "alt_title", "year", "description", "category")
DEFAULT_FIELDS = ("title", "alt_title", "year", "description")


def field_of(item: Any, name: str) -> Any:
    """A field of an item given as a dict/row, an `mmrec.Item` or any object with those attributes."""
    if isinstance(item, Mapping):
        return item.get(name)
    return getattr(item, name, None)


def _attributes(item: Any) -> dict[str, Any]:
    attrs = field_of(item, "attributes")
    if not attrs:
        return {}
    if isinstance(attrs, str):
        try:
            attrs = json.loads(attrs)
        except json.JSONDecodeError:
            return {}
    return dict(attrs) if isinstance(attrs, Mapping) else {}


@dataclass(frozen=True)
class ItemRecipe:
    """Which item fields make the text the encoders embed (see the module docstring)."""

    fields: tuple[str, ...] = DEFAULT_FIELDS

    def __post_init__(self) -> None:
        fields = tuple(self.fields)
        unknown = [f for f in fields if f not in FIELDS]
        if unknown or "title" not in fields:
            raise ValueError(f"recipe fields must include 'title' and come from {', '.join(FIELDS)}; "
                             f"got {', '.join(fields) or 'none'}")
        object.__setattr__(self, "fields", fields)

    @classmethod
    def parse(cls, text: str) -> "ItemRecipe":
        """From a comma-separated field list, e.g. "title,description,category"."""
        return cls(tuple(f.strip() for f in text.split(",") if f.strip()))

    @property
    def id(self) -> str:
        """Identity of the recipe: part of every vector-space version."""
        return f"item-text/{RECIPE_VERSION}:{'+'.join(self.fields)}"

    def text(self, item: Any) -> str | None:
        """The text that stands for the item, None when it has no title. ML-1M with ("title", "year",
        "category"): "Heat (1995). Action, Crime, Thriller"."""
        raw = field_of(item, "title")
        if not isinstance(raw, str) or not raw.strip():
            return None
        title = raw.strip()
        attrs = _attributes(item) if ("alt_title" in self.fields or "year" in self.fields) else {}
        if "alt_title" in self.fields and attrs.get("alt_title"):
            title += f" ({attrs['alt_title']})"
        if "year" in self.fields and attrs.get("year"):
            title += f" ({attrs['year']})"
        parts = [title]
        description = field_of(item, "description")
        if "description" in self.fields and isinstance(description, str) and description.strip():
            parts.append(description.strip())
        category = field_of(item, "category")
        if "category" in self.fields and isinstance(category, str) and category.strip():
            parts.append(", ".join(p for p in category.replace("/", "|").split("|") if p))
        return ". ".join(parts)

    @staticmethod
    def image(item: Any) -> Any:
        """The item's image: `image` (bytes / PIL / path) if present, else `image_path`; None without one."""
        image = field_of(item, "image")
        return image if image is not None else field_of(item, "image_path")
