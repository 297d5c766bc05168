"""Moved: `TextOrVectorConditioner` lives in `paramgen.conditioners.text_or_vector`.

Kept only so that ``from paramgen.lora.conditioner import TextOrVectorConditioner`` keeps
working; import it from `paramgen.conditioners` (or `paramgen.lora`).
"""

from paramgen.conditioners.text_or_vector import TextOrVectorConditioner

__all__ = ["TextOrVectorConditioner"]
