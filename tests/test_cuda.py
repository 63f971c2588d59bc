"""What only a CUDA device can show: the CUDA-graph samplers (VAR's scales, MAR's diffusion loops) against the
eager ones. Skipped without a GPU (CI has none); run on a GPU machine with ``python -m pytest tests/test_cuda.py``."""

from pathlib import Path

import pytest
import torch

from edifice.official import load_official_mar, load_official_var

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
FIX = Path(__file__).parent / "fixtures" / "var"
MAR = Path(__file__).parent / "fixtures" / "mar"


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def pipe(request):
    return load_official_var(FIX / "vae_tiny.pth", FIX / "var_tiny.pth", device="cuda", dtype=request.param)


def tokens(pipe, **kw):
    return [s.tokens for s in pipe.stream(**{"labels": [1, 7], "seed": 3, "top_k": 8, "preview": False, **kw})]


@pytest.mark.parametrize("scales", [None, [1, 2, 4]])
def test_graphs_sample_the_eager_tokens(pipe, scales):
    """The default on CUDA (graphs) draws exactly the eager tokens, again on a second run (replay, no capture)
    and after a batch size that needs other graphs."""
    eager = tokens(pipe, cuda_graphs=False, scales=scales)
    for kw in ({}, {}, {"labels": [5]}, {}):
        got = tokens(pipe, scales=scales, **kw)
        want = eager if "labels" not in kw else tokens(pipe, cuda_graphs=False, scales=scales, **kw)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_interleaved_generations_are_refused(pipe):
    a, b = pipe.stream(labels=[1, 7], seed=1), pipe.stream(labels=[1, 7], seed=2)
    next(a), next(b)
    with pytest.raises(RuntimeError, match="cuda_graphs=False"):
        next(a)
    a, b = pipe.stream(labels=[1, 7], seed=1, cuda_graphs=False), pipe.stream(labels=[1, 7], seed=2)
    assert len(list(zip(a, b, strict=True))) == len(pipe.scales)


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def mar(request):
    return load_official_mar(MAR / "tiny_kl16.safetensors", MAR / "tiny_mar_checkpoint-last.pth", device="cuda",
                             dtype=request.param, encoder_num_heads=4, decoder_num_heads=3)


@pytest.mark.parametrize("kw", [dict(num_steps=8, cfg=2.5), dict(num_steps=16, cfg=1.0, temperature=0.9),
                                dict(num_steps=4, cfg=3.0, cfg_schedule="constant", num_sampling_steps=10)])
def test_mar_graphs_sample_the_eager_tokens(mar, kw):
    """Each step's diffusion loop replayed as a CUDA graph (the default on CUDA) gives the eager tokens exactly,
    with and without guidance, on a first run (capture) and a second (replay), two generations interleaved."""
    kw = dict(labels=[1, 3], seed=5, preview=False, **kw)
    eager = [s.tokens for s in mar.stream(cuda_graphs=False, **kw)]
    for _ in range(2):
        assert all(torch.equal(a.tokens, b) for a, b in zip(mar.stream(**kw), eager, strict=True))
    a, b = mar.stream(**kw), mar.stream(**{**kw, "seed": 6})
    assert all(torch.equal(x.tokens, e) for (x, _), e in zip(zip(a, b, strict=True), eager, strict=True))
