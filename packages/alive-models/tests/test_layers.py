import pytest
import torch

from alive_models.layers.attention import attention, attention_backend, reference_attention
from alive_models.layers.embeddings import patchify, unpatchify
from alive_models.layers.norms import RMSNorm
from alive_models.layers.rope import RotaryEmbedding, apply_rotary, apply_rotary_qk


def qkv(b=2, lq=7, lk=9, h=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, lq, h, d, generator=g),
        torch.randn(b, lk, h, d, generator=g),
        torch.randn(b, lk, h, d, generator=g),
    )


def test_sdpa_matches_reference_with_and_without_mask():
    q, k, v = qkv()
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 5:] = False
    for m in (None, mask):
        with attention_backend("sdpa"):
            out = attention(q, k, v, m)
        torch.testing.assert_close(out, reference_attention(q, k, v, m), atol=1e-5, rtol=1e-5)
    # Masked keys really are ignored: changing them changes nothing.
    k2, v2 = k.clone(), v.clone()
    k2[0, 5:] += 10
    v2[0, 5:] -= 3
    torch.testing.assert_close(attention(q, k2, v2, mask), attention(q, k, v, mask))


def test_auto_backend_on_cpu_is_sdpa_and_flash_refuses():
    q, k, v = qkv()
    torch.testing.assert_close(attention(q, k, v), reference_attention(q, k, v), atol=1e-5, rtol=1e-5)
    with attention_backend("flash"), pytest.raises(RuntimeError, match="flash-attn"):
        attention(q, k, v)


def test_fully_masked_rows_give_zeros_not_nan():
    q, k, v = qkv()
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1] = False
    for backend in ("sdpa", "reference"):
        with attention_backend(backend):
            out = attention(q, k, v, mask)
        assert torch.isfinite(out).all()
        assert (out[1] == 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_backends_agree_with_reference():
    q, k, v = (x.cuda().bfloat16() for x in qkv(lq=128, lk=128, d=64))
    ref = reference_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(attention(q, k, v).float(), ref, atol=2e-2, rtol=2e-2)


def complex_rope_reference(x, positions, axes_dims, theta):
    """RoPE as complex rotation of consecutive halves (the textbook form), per axis."""
    half = x.shape[-1] // 2
    angles = []
    for axis, d in enumerate(axes_dims):
        freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        angles.append(positions[..., axis, None].double() * freqs)
    angles = torch.cat(angles, dim=-1)[:, :, None]  # [B, L, 1, D/2]
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(
        torch.ones_like(angles), angles
    )
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def test_rope_matches_complex_reference_and_is_relative():
    axes = (4, 6, 6)
    rope = RotaryEmbedding(axes, theta=100.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 5, 2, 16, generator=g)
    pos = torch.randn(1, 5, 3, generator=g) * 10  # real-valued, negative too
    cos, sin = rope(pos)
    torch.testing.assert_close(
        apply_rotary(x, cos, sin), complex_rope_reference(x, pos, axes, 100.0), atol=1e-5, rtol=1e-4
    )
    # Scores depend only on position differences.
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)

    def score(pq, pk):
        cq, sq = rope(torch.tensor([[pq]]))
        ck, sk = rope(torch.tensor([[pk]]))
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    torch.testing.assert_close(
        score([1.5, 2, 3], [0.25, 1, 1]), score([11.5, 7, 9], [10.25, 6, 7]), atol=1e-5, rtol=1e-5
    )
    q2, k2 = apply_rotary_qk(x, 2 * x, cos, sin)
    torch.testing.assert_close(q2, apply_rotary(x, cos, sin))
    torch.testing.assert_close(k2, apply_rotary(2 * x, cos, sin))


def test_rope_tables_are_cached_per_key_device_and_dtype():
    rope = RotaryEmbedding((4, 6, 6), theta=100.0, cache_size=2)
    builds = []

    def positions():
        builds.append(1)
        return torch.arange(15, dtype=torch.float64).reshape(5, 3)

    cos, _ = rope.table("a", positions, torch.device("cpu"), torch.bfloat16)
    assert cos.dtype == torch.bfloat16 and cos.shape == (1, 5, 16)
    torch.testing.assert_close(cos.float(), rope(positions()[None])[0].float(), atol=1e-2, rtol=0)
    builds.clear()
    assert rope.table("a", positions, torch.device("cpu"), torch.bfloat16)[0] is cos
    assert builds == []  # a hit builds nothing
    rope.table("a", positions, torch.device("cpu"), torch.float32)  # another dtype is another table
    rope.table("b", positions, torch.device("cpu"), torch.float32)
    assert len(builds) == 2 and len(rope._tables) == 2  # bounded: the oldest entry went
    with torch.inference_mode():
        rope.table("c", positions, torch.device("cpu"), torch.float32)
    q = torch.randn(1, 5, 2, 16, requires_grad=True)
    apply_rotary(q, *rope.table("c", positions, torch.device("cpu"), torch.float32)).sum().backward()
    assert q.grad is not None  # a table built while sampling serves training too


def test_rope_frequencies_survive_a_bf16_cast():
    rope = RotaryEmbedding((8,), theta=10_000.0)
    rope.to(torch.bfloat16)  # owns no tensors: nothing to degrade
    pos = torch.tensor([[[1000.0]]])
    cos, _ = rope(pos)
    expected = torch.cos(1000.0 / 10_000.0 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8))
    torch.testing.assert_close(cos[0, 0, :4], expected)


def test_rms_norm_matches_formula():
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2, 8))
    x = torch.randn(3, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_patchify_round_trip_and_order():
    x = torch.randn(2, 3, 4, 6, 8)
    tokens = patchify(x, (1, 2, 2))
    assert tokens.shape == (2, 4 * 3 * 4, 12)
    torch.testing.assert_close(unpatchify(tokens, (4, 3, 4), (1, 2, 2), 3), x)
    # Token 1 is the patch at (t=0, h=0, w=1).
    torch.testing.assert_close(tokens[0, 1].reshape(3, 1, 2, 2), x[0, :, 0:1, 0:2, 2:4])
    with pytest.raises(ValueError, match="divisible"):
        patchify(torch.randn(1, 3, 4, 5, 8), (1, 2, 2))
