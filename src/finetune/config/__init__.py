"""Recipes: YAML -> frozen, typed settings. Imports no torch."""

from finetune.config.load import LoadedRecipe, load_recipe, load_recipe_text
from finetune.config.settings import DatasetSettings, Settings, SpecialTokens

__all__ = ["DatasetSettings", "LoadedRecipe", "Settings", "SpecialTokens", "load_recipe", "load_recipe_text"]
