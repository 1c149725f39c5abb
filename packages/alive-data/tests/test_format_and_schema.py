import json
import math

import pytest
import webdataset as wds

from alive_data.avformat import AVFormat
from alive_data.inspect import inspect_shards
from alive_data.loader import ResumableLoader
from alive_data.media import encode_flac
from alive_data.pipeline import PipelineConfig
from alive_data.prepare import SamplePreparer
from alive_data.schema import validate_metadata
from alive_data.shards import expand_urls
from alive_data.stream import AVStream
from alive_data.synthetic import SPEECH_CAPTION, make_clips, moving_clip, tone
from alive_data.writer import WriteOptions, write_shards
from alive_models.codecs import DeterministicAudioCodec, DeterministicVideoCodec, timeline_for
from alive_models.config import get_preset
from alive_models.mp4 import encode_mp4

META = {"caption": SPEECH_CAPTION, "fps": 24, "duration": 1.2, "width": 64, "height": 48}
LATENTS = {
    "video": {"channels": 768, "spatial_stride": 8, "temporal_stride": 4, "causal_first_frame": True},
    "audio": {"channels": 640, "sample_rate": 16000, "hop_length": 640},
    "video_codec": "deterministic",
    "audio_codec": "deterministic",
}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"fps": "24"}, "field 'fps': Input should be a valid number"),
        ({"width": True}, "field 'width'"),
        ({"duration": -1.0}, "field 'duration': Input should be greater than 0"),
        ({"quality": {"aesthetic": math.nan}}, "field 'quality.aesthetic': Value error, must be a finite"),
        ({"quality": {"beauty": 1.0}}, "unknown field 'quality.beauty'"),
        ({"speaking": "yes"}, "field 'speaking'"),
        ({"latents": {k: v for k, v in LATENTS.items() if k != "audio"}}, "missing field 'latents.audio'"),
        ({"latents": {**LATENTS, "video": {"stride": 8}}}, "missing field 'latents.video.channels'"),
        ({"latents": LATENTS, "sample_rate": 22050}, "cached at 16000 Hz"),
        ({"num_frames": 0}, "field 'num_frames'"),
    ],
)
def test_metadata_schema_is_strict(change, problem):
    problems = validate_metadata({**META, **change})
    assert any(problem in p for p in problems), problems
    assert validate_metadata({**META, "latents": LATENTS, "subject_tracks": [[1, 2]]}) == []  # extras kept
    assert validate_metadata([1]) == ["metadata must be a JSON object, got list"]


def test_one_format_checked_where_it_meets_the_model_and_the_buckets():
    fmt = AVFormat.from_codecs(24, DeterministicVideoCodec(), DeterministicAudioCodec())
    assert fmt.sample_rate == 16_000 and AVFormat.from_dict(json.loads(json.dumps(fmt.to_dict()))) == fmt
    assert fmt.timeline == timeline_for(fmt.video, fmt.audio, 24)
    fmt.check_timeline(get_preset("tiny").timeline)  # the presets' 24 fps, stride 4, 25 latents/s
    with pytest.raises(ValueError, match=r"fps: model 24\.0, data 25"):
        AVFormat.from_codecs(25, DeterministicVideoCodec(), DeterministicAudioCodec()).check_timeline(
            get_preset("tiny").timeline
        )
    with pytest.raises(ValueError, match=r"audio_latent_rate: model 25\.0, data 20\.0"):
        AVFormat.from_codecs(
            24, DeterministicVideoCodec(), DeterministicAudioCodec(hop_length=800)
        ).check_timeline(get_preset("tiny").timeline)
    with pytest.raises(ValueError, match="codec takes 16000 Hz"):
        AVFormat(24, 22_050, audio=DeterministicAudioCodec().geometry)
    source = [{"name": "a", "urls": ["x.tar"]}]
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):  # a bucket the video codec cannot encode
        PipelineConfig.from_dict({"sources": source, "format": fmt.to_dict(), "buckets": {"frames": [24]}})
    with pytest.raises(ValueError, match="geometry"):
        PipelineConfig.from_dict({"sources": source, "latents": {"video": "a", "audio": "b"}})


def test_writer_refuses_codecs_at_another_audio_rate(tmp_path):
    items = make_clips(tmp_path / "src", 1)
    options = WriteOptions(sample_rate=22_050, video_codec="deterministic", audio_codec="deterministic")
    with pytest.raises(ValueError, match="audio codec takes 16000 Hz"):
        write_shards(items, tmp_path / "out", options, workers=0, progress=False)


def test_samples_in_another_format_are_counted_and_inspect_reads_their_own(tmp_path, config_for):
    write_shards(
        make_clips(tmp_path / "src", 2), tmp_path / "at25", WriteOptions(fps=25), workers=0, progress=False
    )
    meta = {**META, "sample_rate": 22_050, "num_frames": 29}
    with wds.TarWriter(str(tmp_path / "at25" / "shard-000009.tar")) as sink:
        sink.write(
            {
                "__key__": "rate",
                "json": json.dumps(meta).encode(),
                "mp4": encode_mp4(moving_clip(24, 1.2, 48, 64), 24),
                "flac": encode_flac(tone(22_050, 1.2, 300), 22_050),
            }
        )
    loader = ResumableLoader(AVStream(PipelineConfig.from_dict(config_for(tmp_path / "at25"))))
    assert list(loader) == []
    assert loader.stats() == {"wrong_fps": 2, "wrong_sample_rate": 1, "partial_batch": 0}
    report = inspect_shards(expand_urls(str(tmp_path / "at25")), decode=True, progress=False)
    assert report.valid == 3 and not report.bad  # each decoded in the format it records


def test_programming_errors_are_not_counted_as_bad_samples(shards, config_for, monkeypatch):
    def broken(self, sample, bucket):
        raise TypeError("a bug, not bad data")

    monkeypatch.setattr(SamplePreparer, "_fit_pixels", broken)
    with pytest.raises(TypeError, match="a bug"):
        list(ResumableLoader(AVStream(PipelineConfig.from_dict(config_for(shards)))))
