import pytest
import torch

from alive_models import Timeline, unitemp_audio_positions, unitemp_video_positions


def test_unitemp_pinned_24fps_stride4_causal():
    # 24 fps video, Wan-style causal 4x temporal stride, 25 audio latents/s.
    # latent 0 = pixel frame 0 = [0, 1/24) s, centre 0.5/24 s        -> 0.5/24*25 - 0.5 = 0.0208333
    # latent 1 = frames 1..4 = [1/24, 5/24) s, centre 3/24 s         -> 3.125 - 0.5     = 2.625
    # latent 2 = frames 5..8 = [5/24, 9/24) s, centre 7/24 s         -> 7.2916667 - 0.5 = 6.7916667
    # latent 3 = frames 9..12 = [9/24, 13/24) s, centre 11/24 s      -> 11.458333 - 0.5 = 10.958333
    timeline = Timeline(fps=24, temporal_stride=4, causal_first_frame=True, audio_latent_rate=25)
    expected = torch.tensor(
        [0.5 / 24 * 25 - 0.5, 2.625, 7 / 24 * 25 - 0.5, 11 / 24 * 25 - 0.5], dtype=torch.float64
    )
    torch.testing.assert_close(unitemp_video_positions(4, timeline), expected)
    assert unitemp_video_positions(4, timeline)[1] == pytest.approx(2.625)


def test_unitemp_non_causal_and_same_rate_is_identity():
    # Without a causal first frame, stride 1 and audio rate == fps, video latent i sits exactly at i.
    timeline = Timeline(fps=25, temporal_stride=1, causal_first_frame=False, audio_latent_rate=25)
    torch.testing.assert_close(unitemp_video_positions(6, timeline), torch.arange(6, dtype=torch.float64))
    # Non-causal stride 4 at 24 fps: latent i covers frames 4i..4i+3, centre (4i+2)/24 s.
    timeline = Timeline(fps=24, temporal_stride=4, causal_first_frame=False, audio_latent_rate=25)
    expected = torch.tensor([(4 * i + 2) / 24 * 25 - 0.5 for i in range(3)], dtype=torch.float64)
    torch.testing.assert_close(unitemp_video_positions(3, timeline), expected)


def test_video_positions_fall_inside_overlapping_audio_span():
    timeline = Timeline()
    spans = timeline.video_latent_spans(31)
    pos = unitemp_video_positions(31, timeline)
    start = spans[:, 0] / timeline.fps * timeline.audio_latent_rate - 0.5
    end = (spans[:, 1] + 1) / timeline.fps * timeline.audio_latent_rate - 0.5
    assert ((pos >= start) & (pos <= end)).all()
    assert (pos.diff() > 0).all()


def test_audio_positions_are_integers():
    torch.testing.assert_close(
        unitemp_audio_positions(5), torch.tensor([0.0, 1, 2, 3, 4], dtype=torch.float64)
    )


def test_frame_counts():
    t = Timeline()
    assert t.num_video_latents(121) == 31
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        t.num_video_latents(120)
    assert Timeline(causal_first_frame=False).num_video_latents(120) == 30
    # Non-strict: the latents the frames fill completely (what a writer keeps after trimming).
    assert t.num_video_latents(120, strict=False) == 30 and t.num_frames(30) == 117
    assert Timeline(causal_first_frame=False).num_video_latents(123, strict=False) == 30
    with pytest.raises(ValueError):
        Timeline(fps=0)
