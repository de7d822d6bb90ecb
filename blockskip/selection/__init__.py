"""Which blocks to skip: the cross-attention masking probe, importance profiles, and the (n*, m*) search.

Imports `training` (the probe samples images) and the layers below it.
"""

from .masking import TextAttentionMask, mask_text_attention
from .profile import ProfileError, SelectionProfile, best_skip, search_split, table_from_profile
from .select import select_blocks

__all__ = [
    "ProfileError",
    "SelectionProfile",
    "TextAttentionMask",
    "best_skip",
    "mask_text_attention",
    "search_split",
    "select_blocks",
    "table_from_profile",
]
