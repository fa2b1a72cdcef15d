"""The projector from a tower's global token to the denoiser's conditioning space.

LayerNorm -> Linear -> GELU -> Linear to the UNet's cross-attention width, as upstream. Its
output is broadcast over the context length and added to the (constant) embedding of the
empty prompt, so an untrained projector starts from the unconditional denoiser.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dcr_mllm.errors import ConfigError


def check_widths(
    tower_width: int, projector_input: int, projector_output: int, unet_width: int, what: str = "global embedding"
) -> None:
    """Fail with both numbers named when a projector cannot sit between this tower and UNet.

    Args:
        tower_width: width of the tower's features the projector reads.
        projector_input: the projector's input width (``projector.input_dim``).
        projector_output: the projector's output width (``projector.output_dim``).
        unet_width: the UNet's cross-attention width.
        what: which tower features, as the error names them: global embedding or patch token.
    """
    if projector_input != tower_width:
        raise ConfigError(
            f"projector input width {projector_input} does not match the tower's {what} "
            f"width {tower_width}; set projector.input_dim={tower_width} or leave it unset"
        )
    if projector_output != unet_width:
        raise ConfigError(
            f"projector output width {projector_output} does not match the UNet cross-attention "
            f"width {unet_width}; set projector.output_dim={unet_width} or leave it unset"
        )


class ConditionProjector(nn.Module):
    """Maps a tower's global embedding [B, in] (or patch tokens [B, N, in], token by token) to a
    UNet context [B, L, cross] (``project``, then ``broadcast``)."""

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or output_dim
        self.input_dim, self.output_dim = input_dim, output_dim
        self.net = nn.Sequential(
            nn.LayerNorm(input_dim),
            nn.Linear(input_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, output_dim),
        )

    def forward(self, global_embedding: Tensor, empty_context: Tensor) -> Tensor:
        """Condition = empty-prompt embedding [1, L, cross] + projection broadcast over L."""
        return self.broadcast(self.project(global_embedding), empty_context)

    def project(self, global_embedding: Tensor) -> Tensor:
        """The condition as one [B, cross] vector per image: what is gathered across ranks."""
        if global_embedding.shape[-1] != self.input_dim:
            raise ConfigError(
                f"projector expects {self.input_dim}-wide embeddings, the tower gives "
                f"{global_embedding.shape[-1]}; rebuild the projector for this tower"
            )
        return self.net(global_embedding)

    @staticmethod
    def broadcast(projected: Tensor, empty_context: Tensor) -> Tensor:
        """[B, cross] vectors to [B, L, cross] contexts: added to every token of the empty prompt.
        [B, N, cross] tokens (``condition: tokens``): token n added to context token n, one to
        one as DIVA adds its visual tokens; the context's other L - N tokens stay the empty prompt's."""
        empty = empty_context.to(projected.dtype)
        if projected.dim() == 2:
            return empty + projected[:, None, :]
        return empty + F.pad(projected, (0, 0, 0, empty.shape[1] - projected.shape[1]))
