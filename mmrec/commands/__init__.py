"""CLI subcommands, one module each (see mmrec.cli.COMMANDS), and the options they share."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mmrec.embedding.recipe import ItemRecipe
from mmrec.errors import UserError


def parse_recipe(text: str | None) -> ItemRecipe:
    """`--text-fields title,description,...` -> the item recipe (the default recipe when not given)."""
    if not text:
        return ItemRecipe()
    try:
        return ItemRecipe.parse(text)
    except ValueError as exc:
        raise UserError(f"--text-fields: {exc}") from None


def repeat_purchases_setting(choice: str, meta: Mapping[str, Any] | None) -> bool:
    """`--repeat-purchases on|off`, or (`auto`) the built-in dataset's own setting from its `meta` (on for
    grocery); off for a user's files, which carry no such setting."""
    if choice != "auto":
        return choice == "on"
    return bool((meta or {}).get("repeat_purchases", False))
