"""Discrete MAR: the seed's checks, the decoder's semantics, a learning test and the image pipeline."""

import math

import pytest
import torch

from edifice import MAR, VQVAE, MARConfig, MARPipeline, MARStep, VQVAEConfig
from edifice.generative.mar import (
    build,
    cfg_logits,
    decode_steps,
    iterative_decode,
    mar_loss,
    mask_ratios,
    random_mask,
    reveal_schedule,
    sample_mask_ratio,
)

V, L = 33, 16  # 32 data ids + [MASK]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The models here are tiny: one thread is as fast, and several times faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(num_classes=None, seq_len=L, vocab_size=V, seed=0) -> MAR:
    torch.manual_seed(seed)
    return build(vocab_size=vocab_size, embed_dim=32, num_layers=2, num_heads=4, seq_len=seq_len, dropout=0.0,
                 num_classes=num_classes).eval()


def steps_of(model, **kwargs) -> list[MARStep]:
    return list(decode_steps(model, **kwargs))


# -- the seed's checks ---------------------------------------------------------------------------------------
def test_build_gives_finite_logits_of_the_documented_shape():
    model = tiny()
    tokens = torch.randint(0, V, (2, L))
    logits = model(tokens)
    assert logits.shape == (2, L, V)
    assert torch.isfinite(logits).all()
    assert model(tokens[:, :10]).shape == (2, 10, V)  # seq_len is the longest sequence
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.zeros(1, L + 1, dtype=torch.long))
    assert model.num_classes == 0 and MARConfig(vocab_size=V).to_dict()["vocab_size"] == V


def test_build_requires_vocab_size():
    with pytest.raises(TypeError, match="vocab_size"):
        build()


def test_logits_depend_on_the_input_tokens():
    """Edifice's fixed embedding is erased by LayerNorm, so its logits ignore the input; ours must not."""
    model = tiny()
    masked = model(torch.zeros(1, L, dtype=torch.long))
    other = model(torch.randint(1, V, (1, L)))
    assert (masked - other).abs().max() > 1e-3


def test_class_token_conditions_the_logits():
    model = tiny(num_classes=5)
    tokens = torch.randint(0, V, (1, L))
    assert model.num_classes == 5
    assert not torch.allclose(model(tokens, torch.tensor([1])), model(tokens, torch.tensor([2])))
    assert torch.equal(model(tokens), model(tokens, torch.tensor([5])))  # None = the null class


def test_mar_loss_is_the_mean_cross_entropy_over_masked_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, L, V, requires_grad=True)
    targets = torch.randint(1, V, (2, L))
    mask = torch.rand(2, L) < 0.5
    loss = mar_loss(logits, targets, mask)
    manual = -torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0][mask].mean()
    assert loss.ndim == 0 and torch.allclose(loss, manual)
    changed = logits.detach().clone()
    changed[~mask] = torch.randn_like(changed[~mask])  # unmasked positions do not count
    assert torch.allclose(mar_loss(changed, targets, mask), loss)
    loss.backward()
    assert logits.grad[~mask].abs().max() == 0 and logits.grad[mask].abs().max() > 0
    zero = mar_loss(logits, targets, torch.zeros(2, L, dtype=torch.bool))
    assert zero.item() == 0.0
    perfect = torch.nn.functional.one_hot(targets, V).float() * 50
    assert mar_loss(perfect, targets, mask) < 1e-6


@pytest.mark.parametrize("schedule,mean,lo", [("seed", 1 - 2 / math.pi, 0.0), ("maskgit", 2 / math.pi, 0.0),
                                              ("mar", 0.867, 0.7)])
def test_mask_ratios_lie_in_range_with_the_documented_means(schedule, mean, lo):
    r = mask_ratios(20000, schedule, torch.Generator().manual_seed(0))
    assert r.min() >= lo and r.max() <= 1.0
    assert abs(r.mean().item() - mean) < 0.01
    first = sample_mask_ratio(schedule, torch.Generator().manual_seed(3))
    assert first == sample_mask_ratio(schedule, torch.Generator().manual_seed(3)) and 0.0 <= first <= 1.0


def test_sample_mask_ratio_is_the_seed_formula():
    u = torch.rand(1, generator=torch.Generator().manual_seed(7), dtype=torch.float64).item()
    r = sample_mask_ratio(generator=torch.Generator().manual_seed(7))
    assert r == pytest.approx(1 - math.cos(math.pi * u / 2), abs=1e-7)
    assert 0.0 <= sample_mask_ratio() <= 1.0
    with pytest.raises(ValueError, match="maskgit"):
        sample_mask_ratio("uniform")


def test_random_mask_hides_the_masked_positions_only():
    tokens = torch.randint(1, V, (64, L))
    inputs, mask = random_mask(tokens, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == tokens.shape
    assert (inputs[mask] == 0).all() and torch.equal(inputs[~mask], tokens[~mask])
    assert mask.sum(1).min() >= 1 and len(set(mask.sum(1).tolist())) > 3  # one ratio per sample
    again, _ = random_mask(tokens, generator=torch.Generator().manual_seed(0))
    assert torch.equal(inputs, again)


# -- the decoder ---------------------------------------------------------------------------------------------
def test_reveal_schedules():
    assert reveal_schedule(8, 3) == [3, 2, 3]  # Edifice's round((1 - k/K) L), halves up
    assert reveal_schedule(256, 8) == [32] * 8
    # the official MAR sampler's counts (shared/golden/mar/unmask_schedules.json)
    assert reveal_schedule(256, 8, "cosine") == [5, 15, 24, 31, 39, 45, 48, 49]
    assert reveal_schedule(256, 4, "cosine") == [20, 55, 84, 97]
    assert reveal_schedule(36, 16, "cosine") == [1, 1, 1, 1, 1, 2, 2, 2, 3, 2, 4, 3, 3, 3, 4, 3]
    for n in range(1, 30):
        for k in range(1, n + 1):
            for schedule in ("linear", "cosine"):
                counts = reveal_schedule(n, k, schedule)
                assert len(counts) == k and sum(counts) == n and min(counts) >= 1
    with pytest.raises(ValueError, match="linear"):
        reveal_schedule(16, 4, "arccos")


def test_decode_returns_data_ids_and_never_the_mask_id():
    model = tiny()
    with torch.no_grad():
        model.head.bias[0] = 100.0  # the model now "prefers" [MASK] everywhere
    for temperature in (0.0, 1.0):
        tokens = iterative_decode(model, seq_len=L, vocab_size=V, temperature=temperature, seed=0)
        assert tokens.shape == (1, L) and tokens.dtype == torch.long
        assert tokens.min() >= 1 and tokens.max() < V


@pytest.mark.parametrize("schedule,num_steps", [("linear", 3), ("linear", 16), ("cosine", 8), ("cosine", 1)])
def test_decode_steps_reveal_by_schedule_and_freeze_revealed_tokens(schedule, num_steps):
    model = tiny()
    steps = steps_of(model, num_steps=num_steps, schedule=schedule, batch_size=2, seed=1)
    assert len(steps) == num_steps
    mask_before = torch.ones(2, L, dtype=torch.bool)
    tokens_before = torch.zeros(2, L, dtype=torch.long)
    for k, s in enumerate(steps):
        assert (s.step, s.num_steps, s.image) == (k, num_steps, None)
        assert torch.equal(s.tokens == 0, s.mask)
        assert torch.equal(s.revealed, mask_before & ~s.mask)
        assert torch.equal(s.tokens[~mask_before], tokens_before[~mask_before])  # frozen
        assert torch.equal(s.predicted[s.revealed], s.tokens[s.revealed])
        assert ((s.confidence > 0) & (s.confidence <= 1)).all()
        mask_before, tokens_before = s.mask, s.tokens
    counts = torch.stack([s.revealed.sum(1) for s in steps], 1)
    assert counts.tolist() == [reveal_schedule(L, num_steps, schedule)] * 2
    assert not steps[-1].mask.any() and counts.sum(1).tolist() == [L, L]


@pytest.mark.parametrize("num_steps", [0, L + 1, -3])
def test_num_steps_outside_range_raises(num_steps):
    with pytest.raises(ValueError, match=rf"1\.\.{L}"):
        iterative_decode(tiny(), num_steps=num_steps)


def test_same_seed_same_tokens():
    model = tiny()
    a = iterative_decode(model, batch_size=2, seed=5)
    assert torch.equal(a, iterative_decode(model, batch_size=2, seed=5))
    assert not torch.equal(a, iterative_decode(model, batch_size=2, seed=6))
    assert steps_of(model, num_steps=2, seed=None)[0].seed >= 0


def test_temperature_zero_is_argmax_of_the_most_confident():
    model = tiny()
    a = iterative_decode(model, temperature=0, batch_size=2, seed=0)
    assert torch.equal(a, iterative_decode(model, temperature=0, batch_size=2, seed=123))
    first = steps_of(model, temperature=0, num_steps=4, seed=0)[0]
    with torch.no_grad():
        logits = model(torch.zeros(1, L, dtype=torch.long))
    logits[..., 0] = -torch.inf
    conf, pred = logits.softmax(-1).max(-1)
    assert torch.allclose(first.confidence, conf)
    assert torch.equal(first.predicted, pred)
    top = conf[0].argsort(descending=True)[:4]
    assert set(first.revealed[0].nonzero()[:, 0].tolist()) == set(top.tolist())
    assert torch.equal(first.tokens[first.revealed], pred[first.revealed])


def test_temperature_sampling_confidence_is_the_chosen_tokens_probability():
    model = tiny()
    first = steps_of(model, temperature=2.0, num_steps=4, batch_size=2, seed=0)[0]
    with torch.no_grad():
        logits = model(torch.zeros(2, L, dtype=torch.long))
    logits[..., 0] = -torch.inf
    probs = (logits / 2.0).softmax(-1)
    assert torch.allclose(first.confidence, probs.gather(-1, first.predicted[..., None])[..., 0])
    assert not torch.equal(first.predicted, probs.argmax(-1))  # it samples


def test_randomness_randomises_the_order_reproducibly():
    model = tiny()
    plain = steps_of(model, temperature=0, num_steps=4, seed=0)[0].revealed
    noisy = [steps_of(model, temperature=0, num_steps=4, randomness=50.0, seed=s)[0].revealed
             for s in range(4)]
    assert any(not torch.equal(n, plain) for n in noisy)
    again = steps_of(model, temperature=0, num_steps=4, randomness=50.0, seed=0)[0].revealed
    assert torch.equal(noisy[0], again)


def test_cfg_changes_logits_only_where_conditional_and_unconditional_differ():
    model = tiny(num_classes=4)
    with torch.no_grad():
        model.class_emb.weight[2] = model.class_emb.weight[4]  # class 2 == the null class
    tokens = torch.randint(0, V, (2, L))
    labels = torch.tensor([2, 3])
    with torch.no_grad():
        plain, guided = cfg_logits(model, tokens, labels, 1.0), cfg_logits(model, tokens, labels, 3.0)
        uncond = model(tokens)
    assert torch.allclose(plain[0], guided[0], atol=1e-5)  # cond == uncond: no change
    assert not torch.allclose(plain[1], guided[1], atol=1e-3)
    assert torch.allclose(guided[1], uncond[1] + 3.0 * (plain[1] - uncond[1]), atol=1e-5)
    a = iterative_decode(model, labels=[2, 2], cfg=1.0, temperature=0, seed=0)
    assert torch.equal(a, iterative_decode(model, labels=[2, 2], cfg=4.0, temperature=0, seed=0))


def test_batches_and_labels():
    model = tiny(num_classes=4)
    steps = steps_of(model, labels=[0, 1, 3], num_steps=2, seed=0)
    assert steps[-1].tokens.shape == (3, L) and steps[-1].labels.tolist() == [0, 1, 3]
    drawn = steps_of(model, batch_size=5, num_steps=2, seed=0)[-1]
    assert drawn.tokens.shape == (5, L) and drawn.labels.max() < 4  # None = drawn from the seeded generator
    assert steps_of(model, labels=-1, batch_size=2, num_steps=2, seed=0)[-1].labels.tolist() == [4, 4]
    with pytest.raises(ValueError, match="unknown class"):
        iterative_decode(model, labels=[7])
    unconditional = tiny()
    assert iterative_decode(unconditional, batch_size=4, seed=0).shape == (4, L)
    with pytest.raises(ValueError, match="unconditional"):
        iterative_decode(unconditional, labels=[1])
    with pytest.raises(ValueError, match="cfg"):
        iterative_decode(unconditional, cfg=2.0)
    with pytest.raises(ValueError, match="vocab_size"):
        iterative_decode(unconditional, vocab_size=V + 1)


def test_init_tokens_are_kept_and_the_rest_completed():
    model = tiny().train()
    init = torch.zeros(2, L, dtype=torch.long)
    init[0, :5] = torch.arange(1, 6)
    init[1, 10:] = 7
    steps = steps_of(model, init_tokens=init, num_steps=4, seed=0)
    known = init != 0
    for s in steps:
        assert torch.equal(s.tokens[known], init[known]) and not s.revealed[known].any()
        assert (s.confidence[known] == 1).all()
    assert steps[-1].tokens.min() >= 1
    revealed = torch.stack([s.revealed.sum(1) for s in steps], 1)
    assert revealed.tolist() == [reveal_schedule(11, 4), reveal_schedule(10, 4)]
    assert model.training  # decoding runs in eval mode and restores the caller's mode
    assert iterative_decode(model, init_tokens=init, seed=0).shape == (2, L)  # batch_size from init_tokens
    with pytest.raises(ValueError, match="init_tokens"):
        iterative_decode(model, init_tokens=torch.zeros(3, L, dtype=torch.long), batch_size=2)
    with pytest.raises(ValueError, match="init_tokens"):
        iterative_decode(model, init_tokens=torch.zeros(2, L - 1, dtype=torch.long))


# -- learning ------------------------------------------------------------------------------------------------
NUM_PATTERNS = 4


def patterns() -> torch.Tensor:
    """Four length-16 sequences; pattern p uses only ids 4p+1..4p+4, so one token tells which pattern it is.
    A uniformly random sequence over the 16 ids is one of them with probability 4 / 16^16 ~ 2e-19."""
    g = torch.Generator().manual_seed(0)
    return torch.stack([4 * p + 1 + torch.randint(0, 4, (L,), generator=g) for p in range(NUM_PATTERNS)])


def train(num_classes: int | None, steps: int = 300) -> tuple[MAR, float, float]:
    torch.manual_seed(0)
    model = build(vocab_size=17, embed_dim=64, num_layers=2, num_heads=4, seq_len=L, dropout=0.0,
                  num_classes=num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    data, g, losses = patterns(), torch.Generator().manual_seed(1), []
    for _ in range(steps):
        label_B = torch.randint(0, NUM_PATTERNS, (64,), generator=g)
        inputs, mask = random_mask(data[label_B], generator=g)
        loss = mar_loss(model(inputs, label_B if num_classes else None), data[label_B], mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, sum(losses[:10]) / 10, sum(losses[-10:]) / 10


@pytest.fixture(scope="module")
def unconditional_model():
    return train(None)


@pytest.fixture(scope="module")
def conditional_model():
    return train(NUM_PATTERNS)


def test_learning_unconditional_patterns(unconditional_model):
    """Measured (torch 2.13 CPU): loss 2.6 -> 0.50 (a fully masked map keeps about ln 4 of uncertainty);
    100 % of 128 samples are one of the patterns (threshold 80 %; an untrained model: 0 %), 91 % of
    inpaintings from one known token complete that token's pattern (threshold 80 %). Revealing one token per
    step, the model must read the tokens revealed so far to stay within one pattern."""
    model, first, last = unconditional_model
    assert last < 0.25 * first
    data = patterns()
    tokens = iterative_decode(model, num_steps=L, batch_size=128, seed=0)
    hit = (tokens[:, None] == data[None]).all(-1)
    assert hit.any(-1).float().mean() >= 0.8
    target = torch.arange(128) % NUM_PATTERNS
    init = torch.zeros(128, L, dtype=torch.long)
    init[:, 5] = data[target, 5]
    completed = iterative_decode(model, num_steps=4, batch_size=128, init_tokens=init, seed=0)
    assert (completed == data[target]).all(-1).float().mean() >= 0.8


def test_learning_class_conditional_patterns(conditional_model):
    """Measured: loss 2.6 -> 0.11; 95 % of 128 samples at the default 8 steps equal their class's pattern
    (threshold 80 %; an untrained model: 0 %)."""
    model, first, last = conditional_model
    assert last < 0.25 * first
    steps = steps_of(model, batch_size=128, seed=0)
    rate = (steps[-1].tokens == patterns()[steps[-1].labels]).all(-1).float().mean()
    assert rate >= 0.8


# -- the image pipeline --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline():
    torch.manual_seed(0)
    vae = VQVAE(VQVAEConfig(vocab_size=16, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, patch_nums=(4,)))
    return MARPipeline(vae, tiny(num_classes=3, vocab_size=17), class_names=["a", "b", "c"])


def test_pipeline_streams_one_preview_per_step(pipeline):
    assert (pipeline.kind, pipeline.image_size, pipeline.seq_len, pipeline.num_classes) == ("mar", 8, 16, 3)
    steps = list(pipeline.stream(labels=[0, 2], num_steps=4, seed=0))
    assert len(steps) == 4
    for s in steps:
        assert s.image.shape == (2, 3, 8, 8) and 0 <= s.image.min() and s.image.max() <= 1
    assert not torch.allclose(steps[0].image, steps[-1].image)
    assert all(s.image is None for s in pipeline.stream(labels=[0, 2], num_steps=4, seed=0, preview=False))
    images = pipeline.generate(labels=1, batch_size=3, num_steps=4, seed=0)
    assert images.shape == (3, 3, 8, 8) and 0 <= images.min() and images.max() <= 1


def test_pipeline_maps_token_ids_to_codes_minus_one(pipeline):
    last = list(pipeline.stream(labels=[0], num_steps=2, seed=0))[-1]
    with torch.no_grad():
        expected = pipeline.tokenizer.idx_to_img([last.tokens - 1]).add(1).mul(0.5)
    assert torch.allclose(pipeline.decode(last), expected, atol=1e-5)
    assert torch.allclose(last.image, expected, atol=1e-5)
    ids = pipeline.encode(torch.rand(2, 3, 8, 8))
    assert ids.shape == (2, 16) and ids.min() >= 1 and ids.max() <= 16


def test_pipeline_rejects_mismatched_parts(pipeline):
    with pytest.raises(ValueError, match="vocab_size"):
        MARPipeline(pipeline.tokenizer, tiny(vocab_size=16))
    with pytest.raises(ValueError, match="seq_len"):
        MARPipeline(pipeline.tokenizer, tiny(vocab_size=17, seq_len=8))
    multi = VQVAE(VQVAEConfig(vocab_size=16, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                              patch_nums=(1, 2, 4)))
    with pytest.raises(ValueError, match="single-scale"):
        MARPipeline(multi, tiny(vocab_size=17))


def test_fast_preview_is_blocky_until_the_exact_last_step():
    from tests.tiny_models import tiny_mar

    pipe = tiny_mar()
    fast = list(pipe.stream(labels=[1], num_steps=4, seed=0, preview="fast"))
    full = list(pipe.stream(labels=[1], num_steps=4, seed=0, preview="full"))
    first = fast[0].image  # a 4x4 latent decodes to 16 px, shown as 2x2 blocks at 32 px
    assert first.shape == (1, 3, 32, 32)
    assert torch.equal(first, first[..., ::2, ::2].repeat_interleave(2, -1).repeat_interleave(2, -2))
    assert torch.equal(fast[-1].image, full[-1].image) and torch.equal(fast[-1].tokens, full[-1].tokens)
    with pytest.raises(ValueError, match="preview must be"):
        next(pipe.stream(labels=[1], preview="quick"))
