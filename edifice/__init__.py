"""edifice: watch MAR and VAR image generators think.

Models (``edifice.generative``), tokenizers (``edifice.tokenizers``), streaming samplers that yield one record
per step or scale, and loaders for official and edifice checkpoints. Images are NCHW tensors.
"""

from .errors import CheckpointError, EdificeError
from .generative.var import VAR, VARConfig, VARPipeline, VARStep
from .official import load_official_var
from .tokenizers.vqvae import VQVAE, VQVAEConfig

__all__ = ["CheckpointError", "EdificeError", "VAR", "VARConfig", "VARPipeline", "VARStep", "VQVAE", "VQVAEConfig",
           "load_official_var"]
