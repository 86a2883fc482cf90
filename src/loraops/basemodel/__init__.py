"""The offline base model: a tiny Llama pre-trained with Axolotl on a generated multi-skill corpus."""

from loraops.basemodel.build import build_base_model, resolve_base_model
from loraops.basemodel.recipe import DEFAULT_RECIPE, BaseModelRecipe

__all__ = ["DEFAULT_RECIPE", "BaseModelRecipe", "build_base_model", "resolve_base_model"]
