import pytest
import torch

from alive_models import Timeline, unitemp_video_positions
from alive_models.codecs import (
    AudioGeometry,
    DeterministicAudioCodec,
    DeterministicVideoCodec,
    OobleckAudioCodec,
    VideoGeometry,
    WanVideoCodec,
    timeline_for,
)
from alive_models.testing import save_tiny_vaes


def test_deterministic_video_codec_round_trips_exactly_with_wan_geometry():
    codec = DeterministicVideoCodec(spatial_stride=8, temporal_stride=4, causal_first_frame=True)
    video = torch.rand(2, 3, 9, 16, 24) * 2 - 1
    latent = codec.encode(video)
    assert latent.shape == (2, 3 * 4 * 64, 3, 2, 3)
    assert torch.equal(codec.decode(latent), video)
    # Causal first frame: latent 0 is frame 0 alone; latent 1 is frames 1..4.
    one_frame = codec.decode(codec.encode(video[:, :, :1]))
    assert torch.equal(one_frame, video[:, :, :1])
    assert torch.equal(codec.encode(video)[:, :, 1], codec.encode(video[:, :, :5])[:, :, 1])


def test_deterministic_video_codec_other_geometries_and_errors():
    codec = DeterministicVideoCodec(spatial_stride=2, temporal_stride=2, causal_first_frame=False)
    video = torch.randn(1, 3, 6, 4, 6)
    assert codec.encode(video).shape == (1, 24, 3, 2, 3)
    assert torch.equal(codec.decode(codec.encode(video)), video)
    with pytest.raises(ValueError, match="multiple of 2"):
        codec.encode(torch.randn(1, 3, 5, 4, 6))
    with pytest.raises(ValueError, match="multiples of 2"):
        codec.encode(torch.randn(1, 3, 6, 5, 6))
    with pytest.raises(ValueError, match="3 channels"):
        codec.encode(torch.randn(1, 4, 6, 4, 6))


def test_deterministic_audio_codec():
    codec = DeterministicAudioCodec(sample_rate=16_000, hop_length=640)
    assert codec.geometry.latent_rate == 25.0
    wave = torch.randn(2, 1, 640 * 5)
    latent = codec.encode(wave)
    assert latent.shape == (2, 640, 5)
    assert torch.equal(codec.decode(latent), wave)
    short = torch.randn(1, 1, 1000)  # padded to whole latents; the prefix is exact
    assert codec.encode(short).shape[-1] == codec.geometry.num_latents(1000) == 2
    assert torch.equal(codec.decode(codec.encode(short))[..., :1000], short)
    with pytest.raises(ValueError, match="mono"):
        codec.encode(torch.randn(1, 2, 640))


@pytest.fixture(scope="module")
def vae_dirs(tmp_path_factory):
    return save_tiny_vaes(tmp_path_factory.mktemp("vaes"))


@pytest.fixture(scope="module")
def wan_dir(vae_dirs):
    return vae_dirs[0]


def test_wan_adapter_loads_local_dir_and_has_the_unitemp_geometry(wan_dir):
    codec = WanVideoCodec.from_pretrained(wan_dir)
    assert codec.geometry == VideoGeometry(
        channels=16, spatial_stride=8, temporal_stride=4, causal_first_frame=True
    )
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    latent = codec.encode(video)
    assert latent.shape == (1, 16, 3, 2, 2) and latent.dtype == torch.float32
    torch.testing.assert_close(codec.encode(video), latent)  # deterministic (posterior mode)
    decoded = codec.decode(latent)
    assert decoded.shape == video.shape and decoded.abs().max() <= 1
    # The timeline UniTemp-RoPE uses comes from this codec, and it is the Wan2.1 one.
    timeline = timeline_for(codec.geometry, DeterministicAudioCodec().geometry, fps=24)
    assert timeline == Timeline(fps=24, temporal_stride=4, causal_first_frame=True, audio_latent_rate=25)
    assert unitemp_video_positions(2, timeline)[1] == pytest.approx(2.625)


def test_wan_tiled_decode_matches_untiled(wan_dir):
    plain = WanVideoCodec.from_pretrained(wan_dir)
    tiled = WanVideoCodec.from_pretrained(wan_dir, tiling=True)
    tiled.vae.enable_tiling(
        tile_sample_min_height=32,
        tile_sample_min_width=32,
        tile_sample_stride_height=16,
        tile_sample_stride_width=16,
    )
    latent = plain.encode(torch.rand(1, 3, 5, 64, 64) * 2 - 1)
    out = tiled.decode(latent)
    assert out.shape == (1, 3, 5, 64, 64)
    # Tiles blend at the seams: close to the untiled decode, not bit-equal.
    assert (out - plain.decode(latent)).abs().mean() < 0.05


def test_bad_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        WanVideoCodec.from_pretrained(tmp_path)


def test_oobleck_adapter_16khz_mono(vae_dirs):
    codec = OobleckAudioCodec.from_pretrained(vae_dirs[1])
    assert codec.geometry == AudioGeometry(channels=8, sample_rate=16_000, hop_length=640)
    assert codec.geometry.latent_rate == 25.0
    wave = torch.randn(2, 1, 16_000)
    latent = codec.encode(wave)
    assert latent.shape == (2, 8, 25)
    torch.testing.assert_close(codec.encode(wave), latent)
    assert codec.decode(latent).shape == (2, 1, 16_000)
