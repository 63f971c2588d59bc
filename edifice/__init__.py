"""edifice: watch MAR and VAR image generators think.

Models (``edifice.generative``), tokenizers (``edifice.tokenizers``), streaming samplers that yield one record
per step or scale, and loaders for official and edifice checkpoints. Images are NCHW tensors.
"""

from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    EdificeError,
    HubUnreachableError,
    UnknownPresetError,
)
from .generative.fractalgen import FractalGen, FractalGenConfig, FractalGenPipeline, FractalGenStep
from .generative.llamagen import LlamaGen, LlamaGenConfig, LlamaGenPipeline, LlamaGenStep
from .generative.mar import MAR, MARConfig, MARPipeline, MARStep
from .generative.mar_diffusion import DiffusionMAR, DiffusionMARConfig, DiffusionMARPipeline, DiffusionMARStep
from .generative.maskgit import MaskGIT, MaskGITConfig, MaskGITPipeline, MaskGITStep
from .generative.var import VAR, VARConfig, VARPipeline, VARStep
from .loading import download, load
from .official import load_official_mar, load_official_var
from .official_fractalgen import load_official_fractalgen
from .official_llamagen import load_official_llamagen
from .official_maskgit import load_official_maskgit
from .tokenizers.klvae import KLVAE, KLVAEConfig
from .tokenizers.llamagen_vq import LlamaGenVQ, LlamaGenVQConfig
from .tokenizers.vqvae import VQVAE, VQVAEConfig

__all__ = ["CheckpointError", "EdificeError", "MAR", "MARConfig", "MARPipeline", "MARStep", "VAR", "VARConfig",
           "VARPipeline", "VARStep", "VQVAE", "VQVAEConfig", "load_official_var"]
__all__ += ["CheckpointNotFoundError", "HubUnreachableError", "UnknownPresetError", "download", "load"]
__all__ += ["DiffusionMAR", "DiffusionMARConfig", "DiffusionMARPipeline", "DiffusionMARStep", "KLVAE", "KLVAEConfig",
            "load_official_mar"]
__all__ += ["FractalGen", "FractalGenConfig", "FractalGenPipeline", "FractalGenStep", "load_official_fractalgen"]
__all__ += ["LlamaGen", "LlamaGenConfig", "LlamaGenPipeline", "LlamaGenStep", "LlamaGenVQ", "LlamaGenVQConfig",
            "MaskGIT", "MaskGITConfig", "MaskGITPipeline", "MaskGITStep", "load_official_llamagen",
            "load_official_maskgit"]
