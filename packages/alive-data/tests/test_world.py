"""The synthetic world: deterministic, valid captions and metadata, exact timing, learnable sound."""

import json
import tarfile
from dataclasses import replace

import numpy as np
import pytest
import torch

from alive_data.discovery import scan_folder
from alive_data.filters import funnel
from alive_data.schema import validate_metadata
from alive_data.world import (
    Event,
    Scene,
    WorldConfig,
    generate_clip,
    measure_clip,
    render_clip,
    sample_scene,
    write_source_folder,
)
from alive_data.world.config import CHIME_PARTIALS_HZ
from alive_data.world.generate import LABELS_FILE
from alive_data.world.probes import busy_scene, talking_scene
from alive_data.world.render import MOUTH, mouth_box, shape_mask, shutter
from alive_data.world.sound import sounds, tone
from alive_data.writer import WriteOptions, write_shards
from alive_models.caption import parse_caption
from alive_models.codecs.deterministic import DeterministicAudioCodec, DeterministicVideoCodec

CONFIG = WorldConfig()


@pytest.fixture(scope="module")
def clips():
    return [generate_clip(i, seed=3) for i in range(24)]


def test_same_seed_same_clip_and_seeds_differ():
    a, b, c = generate_clip(5), generate_clip(5), generate_clip(5, seed=1)
    assert a.caption == b.caption and np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert a.caption != c.caption


def test_shapes_sizes_and_the_codecs_take_them(clips):
    k = CONFIG.hires_scale
    for clip in clips:
        assert clip.frames.shape == (49, 48, 64, 3) and clip.frames.dtype == np.uint8
        assert clip.hires_frames.shape == (49, 48 * k, 64 * k, 3)
        assert clip.audio.shape == (round(49 / 24 * 16_000),) and clip.audio.dtype == np.float32
        assert np.abs(clip.audio).max() < 1.0
        assert len(clip.references) == len(clip.hires_references) == len(clip.scene.subjects)
        assert all(r.shape == (48, 64, 3) for r in clip.references)
    # The default deterministic codecs (Wan-like geometry): 13 latent frames of 6x8, 52 audio latents.
    video = torch.from_numpy(clips[0].frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    assert DeterministicVideoCodec().encode(video).shape[2:] == (13, 6, 8)
    assert DeterministicAudioCodec().encode(torch.from_numpy(clips[0].audio)[None, None]).shape[-1] == 52


def test_captions_parse_and_tell_the_truth(clips):
    words = {v: k for k, v in CONFIG.event_words.items()}
    for clip in clips:
        caption = parse_caption(clip.caption)
        scene = clip.scene
        assert set(caption.subjects) == {s.id for s in scene.subjects}
        for s in scene.subjects:
            assert s.colour in caption.subjects[s.id] and s.shape in caption.subjects[s.id]
        said = [(u.subject, " ".join(u.words)) for u in sorted(scene.utterances, key=lambda u: u.start)]
        assert [(s.speaker, s.text) for s in caption.transcript] == said
        assert [words[e] for e in caption.events] == [
            e.kind for e in sorted(scene.events, key=lambda e: e.start)
        ]
        assert clip.metadata["speaking"] == caption.speaking
        assert validate_metadata(clip.metadata) == []
    assert any(c.scene.utterances for c in clips) and any(c.scene.events for c in clips)
    assert any(len({u.subject for u in c.scene.utterances}) == 2 for c in clips)  # dialogues happen


@pytest.mark.parametrize("k", [4, 2])
def test_base_frames_are_the_box_average_of_hires(k):
    config = replace(CONFIG, hires_scale=k)
    for clip in [generate_clip(i, config=config) for i in range(3)]:
        hi = clip.hires_frames.astype(np.float64)
        assert hi.shape == (49, 48 * k, 64 * k, 3)
        box = hi.reshape(49, 48, k, 64, k, 3).mean(axis=(2, 4))
        worst = float(np.abs(box - clip.frames).max())
        assert worst <= 1.0, worst  # both are the same float canvas, each rounded once
        # the hi-res adds texture the base cannot show: its 1-pixel detail is not a plain upsampling
        up = np.repeat(np.repeat(clip.frames, k, axis=1), k, axis=2).astype(np.float64)
        assert np.abs(hi - up).mean() > 3
        # and the texture averages away: the base room is flat
        room = np.asarray(config.backgrounds[clip.scene.background])
        assert (np.abs(clip.frames[0, :, 20:44].astype(int) - room).max(axis=-1) == 0).mean() > 0.5


def test_mouth_lies_inside_every_shape():
    size = CONFIG.subject_size * CONFIG.hires_scale
    y0, y1, x0, x1 = mouth_box(size)
    assert (y0, y1, x0, x1) == tuple(round(f * size) for f in MOUTH)
    for shape in ("circle", "square", "triangle", "diamond"):
        assert shape_mask(shape, size, size)[y0:y1, x0:x1].all(), shape


def test_shutter_fractions():
    fps = 24.0
    np.testing.assert_allclose(shutter([(0.2, 0.3)], 8, fps)[4:8], [0.2, 1.0, 1.0, 0.2], atol=1e-12)
    assert shutter([], 3, fps).sum() == 0


def test_every_letter_is_one_fixed_latent_vector():
    """A letter (and the room's hum) starting on a latent boundary is the same latent vector in
    every latent it fills, so the deterministic codec sees the toy language as a codebook."""
    clip = render_clip(talking_scene(("go", "dog"), start=10), CONFIG)
    latents = DeterministicAudioCodec().encode(torch.from_numpy(clip.audio)[None, None])[0].T  # [L, hop]
    hum = torch.from_numpy(sounds(CONFIG)["hum"])
    for letter, start in clip.scene.utterances[0].letters(CONFIG):
        expected = (
            torch.from_numpy(tone(CONFIG, (CONFIG.letter_hz("low", letter), CONFIG.voice_amplitude))) + hum
        )
        for j in range(start, start + CONFIG.letter_latents):
            torch.testing.assert_close(latents[j], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(latents[2], hum, atol=1e-7, rtol=0)  # silence before speech: the hum alone
    # 'g' in "go" and in "dog" is the same vector
    g = [s for letter, s in clip.scene.utterances[0].letters(CONFIG) if letter == "g"]
    assert torch.equal(latents[g[0]], latents[g[1]])


def test_sounds_and_lights_start_on_the_same_instant():
    """A flash at latent 30 (1.2 s): the chime starts at sample 19200; frame 28 (1.1667-1.2083 s) is
    lit for its last fifth, frame 29 fully; a hit's subject touches the wall exactly then."""
    without = busy_scene(CONFIG)
    scene = replace(without, events=(*without.events[:3], Event("flash", "Subject1", 30)))
    chime_alone = (
        render_clip(scene, CONFIG).audio - render_clip(replace(scene, events=scene.events[:3])).audio
    )
    chime = tone(CONFIG, *[(hz, CONFIG.chime_amplitude) for hz in CHIME_PARTIALS_HZ])
    start = 30 * CONFIG.hop_length
    assert np.abs(chime_alone[:start]).max() < 1e-6
    np.testing.assert_allclose(
        chime_alone[start : start + 3 * CONFIG.hop_length], np.tile(chime, 3), atol=1e-6
    )
    assert np.abs(chime_alone[start + 3 * CONFIG.hop_length :]).max() < 1e-6
    flash = shutter([(1.2, 1.2 + CONFIG.seconds(CONFIG.event_latents))], 49, 24.0)
    np.testing.assert_allclose(flash[28:30], [0.2, 1.0], atol=1e-9)
    hit = scene.events[0]
    mover = scene.subject(hit.subject)
    assert scene.x_at(mover, np.array([CONFIG.seconds(hit.start)]), CONFIG)[0] == CONFIG.wall_width


def test_bad_scenes_are_refused():
    good = talking_scene()
    s1, s2 = good.subjects
    with pytest.raises(ValueError, match="share a colour"):
        replace(good, subjects=(s1, replace(s2, colour="red"))).validate(CONFIG)
    with pytest.raises(ValueError, match="moves exactly when"):
        replace(good, events=(Event("hit", "Subject1", 20, "left"),)).validate(CONFIG)
    with pytest.raises(ValueError, match="speak at once"):
        replace(
            good, utterances=(*good.utterances, replace(good.utterances[0], subject="Subject2"))
        ).validate(CONFIG)
    with pytest.raises(ValueError, match="outside latents"):
        replace(good, events=(Event("flash", "Subject2", 49),)).validate(CONFIG)
    with pytest.raises(ValueError, match="not a multiple of the latent rate"):
        WorldConfig(letter_spacing_hz=30.0)


def test_degraded_clips_declare_their_defect_and_the_funnel_drops_them():
    config = WorldConfig(degraded_fraction=1.0)
    kinds = {sample_scene(np.random.default_rng([0, i]), config).degradation for i in range(12)}
    assert kinds == {"blur", "noise", "desync"}
    sft = funnel("sft_480p")
    clean = render_clip(talking_scene())
    assert sft.reason(clean.metadata) is None
    for defect in ("blur", "noise", "desync"):
        clip = render_clip(replace(talking_scene(), degradation=defect))
        assert sft.reason(clip.metadata) is not None
        measured = measure_clip(clip.frames, clip.audio, clip.caption).offset.offset_ms
        assert abs(measured - (240.0 if defect == "desync" else 0.0)) < 3.0, (defect, measured)

    def edge_energy(frames: np.ndarray) -> float:  # blur keeps total variation, not squared slopes
        return float((np.diff(frames.astype(float), axis=2) ** 2).mean())

    blurred = render_clip(replace(talking_scene(), degradation="blur")).frames
    assert edge_energy(blurred) < 0.5 * edge_energy(clean.frames)


def test_source_folder_goes_through_the_writer_with_references_and_labels(tmp_path):
    src = write_source_folder(tmp_path / "src", 6, seed=1, workers=0)
    assert [p.name for p in src] == [f"world1_{i:06d}.mp4" for i in range(6)]
    for path in src:
        meta = json.loads(path.with_suffix(".json").read_text())
        assert all((path.parent / r).is_file() for r in meta["references"])
    assert not list((tmp_path / "src").glob(".*.tmp"))
    options = WriteOptions(label_table=str(tmp_path / "src" / LABELS_FILE))
    report = write_shards(
        scan_folder(tmp_path / "src").items, tmp_path / "shards", options, workers=0, progress=False
    )
    assert report.written == 6 and not report.skipped
    with tarfile.open(report.shards[0]) as tar:
        names = tar.getnames()
        metas = {n: json.loads(tar.extractfile(n).read()) for n in names if n.endswith(".json")}
    for name, meta in metas.items():
        key = name.removesuffix(".json")
        subjects = len(meta["world"]["scene"]["subjects"])
        assert [n for n in names if n.startswith(key + ".ref_") and n.endswith(".jpg")] == [
            f"{key}.ref_{k}.jpg" for k in range(subjects)
        ]
        speaks = bool(meta["world"]["scene"]["utterances"])
        assert (f"{key}.ref_audio.flac" in names) == speaks  # another utterance of the first speaker
        assert "references" not in meta and meta["category"]["l1"]
        kinds = {e["kind"] for e in meta["world"]["scene"]["events"]}
        assert bool(meta["labels"]) == bool(kinds), meta["caption"]


def test_writer_counts_a_missing_reference(tmp_path):
    path = write_source_folder(tmp_path, 1, workers=0)[0]
    (tmp_path / f"{path.stem}.ref_0.jpg").unlink()
    report = write_shards(scan_folder(tmp_path).items, tmp_path / "out", workers=0, progress=False)
    assert report.written == 0 and report.skipped == {"missing_file": 1}


def test_scene_round_trips_through_its_sidecar(clips):
    clip = clips[1]
    scene = Scene.from_dict(json.loads(json.dumps(clip.metadata["world"]["scene"])))
    again = render_clip(scene, CONFIG)
    assert again.caption == clip.caption and np.array_equal(again.frames, clip.frames)
