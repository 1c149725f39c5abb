"""Sync through alive-infer's output: a clip whose audio-video offset is known (the synthetic world)
written by ``write_outputs`` (what ``GenerationResult.save`` and ``alive-infer generate`` call),
decoded back by alive-data's one-clock decoder, keeps its offset to within a few milliseconds (AAC
priming and padding included). The world's A/V offset metric measures it."""

import numpy as np
import pytest
import soundfile as sf

from alive_data.media import decode_clip
from alive_data.world import WorldConfig, measure_clip, render_clip
from alive_data.world.probes import shift_audio, talking_scene
from alive_infer.output import write_outputs

CONFIG = WorldConfig()


@pytest.mark.parametrize("shift_ms", [0.0, 80.0, -60.0])
def test_known_offset_survives_the_mp4_and_the_wav(tmp_path, shift_ms):
    clip = render_clip(talking_scene())
    audio = shift_audio(clip.audio, shift_ms, CONFIG.sample_rate)
    truth = measure_clip(clip.frames, audio, clip.caption, config=CONFIG).offset.offset_ms
    assert abs(truth - shift_ms) < 3.0  # the metric reads the shift we made

    paths = write_outputs(tmp_path / "clip.mp4", clip.frames, CONFIG.fps, audio, CONFIG.sample_rate, {})
    decoded = decode_clip(paths["mp4"], CONFIG.fps, CONFIG.sample_rate)
    assert decoded.frames.shape == clip.frames.shape and len(decoded.audio) == len(audio)
    through_mp4 = measure_clip(decoded.frames, decoded.audio, clip.caption, config=CONFIG).offset
    assert through_mp4.valid and abs(through_mp4.offset_ms - truth) < 2.0, (shift_ms, through_mp4)

    wave, rate = sf.read(paths["wav"], dtype="float32")
    assert rate == CONFIG.sample_rate and len(wave) == len(audio)
    assert np.abs(wave - np.clip(audio, -1, 1)).max() <= 1 / 32768  # PCM16, sample 0 at frame 0
