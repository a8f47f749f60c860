"""The shape plan of a hierarchical VAE: its stages, their latent groups and resolutions.

A stage is a run of identical blocks: `groups[s]` latent groups that share their latent size
`group_dims[s]` and width `widths[s]` (and, for the conv body, one resolution), run as one
scanned stack (src/models/stack.py). Stage 0 is the bottom (nearest the data); z_1 is the
bottom group of stage 0 and z_L the top group of the last stage.

Latent units are numbered z_1 first: group l holds `group_sizes[l]` consecutive units of the
flat noise vector eps [batch, sum(group_sizes)] the train step draws. An mlp group has
group_dims[s] units; a conv group has group_dims[s] channels at each of its H x W positions
(a unit is a (position, channel)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from src.utils.errors import ConfigError


class Stage(NamedTuple):
    groups: int  # latent groups in the stage
    dim: int  # latent units of a group (mlp) or latent channels per position (conv)
    width: int  # hidden width (mlp) or channels (conv) of the stage's blocks
    size: tuple[int, int]  # conv: (H, W) of the stage's feature maps; mlp: (1, 1)
    factor: int  # conv: average-pooling factor from the previous stage (the image for stage 0)
    conv: bool

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one group's z per example: (dim,) or (H, W, dim)."""
        return (*self.size, self.dim) if self.conv else (self.dim,)

    @property
    def units(self) -> int:
        return math.prod(self.latent_shape)


def plan_stages(h: Any, image_shape: Sequence[int]) -> tuple[Stage, ...]:
    """The stages of model.hierarchical `h` for images [H, W, C]; a ConfigError names the key and
    the sizes when a pooling factor does not divide its input. The lists' lengths are checked
    with the config (src/utils/config.py)."""
    conv = h.body == "conv"
    size = (int(image_shape[0]), int(image_shape[1])) if conv else (1, 1)
    stages = []
    for s in range(len(h.groups)):
        factor = int(h.conv.downsample[s]) if conv else 1
        if size[0] % factor or size[1] % factor:
            raise ConfigError(
                f"model.hierarchical.conv.downsample[{s}]={factor} does not divide the "
                f"{size[0]}x{size[1]} maps stage {s} receives (image {list(image_shape)}, "
                f"downsample {list(h.conv.downsample)})"
            )
        size = (size[0] // factor, size[1] // factor)
        stages.append(Stage(h.groups[s], h.group_dims[s], h.widths[s], size, factor, conv))
    return tuple(stages)


def group_sizes(stages: Sequence[Stage]) -> tuple[int, ...]:
    """Units of each latent group, z_1 (bottom) first."""
    return tuple(s.units for s in stages for _ in range(s.groups))
