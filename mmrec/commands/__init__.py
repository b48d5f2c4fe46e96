"""CLI subcommands, one module each (see mmrec.cli.COMMANDS), and the options they share."""
from __future__ import annotations

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
