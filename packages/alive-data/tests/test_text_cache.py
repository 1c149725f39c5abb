"""Caption encodings cached by ``alive-data write --text-encoders``: what the shards hold, what the
pipeline hands out (caption dropout gives the null caption's encodings), and that they equal the
encoders' own output."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds

from alive_data.cli import main
from alive_data.loader import ResumableLoader
from alive_data.pipeline import PipelineConfig
from alive_data.stream import AVStream
from alive_data.text_cache import TEXT_ENCODERS
from alive_models.testing import save_tiny_text_models
from alive_models.text import TextConditioner


@pytest.fixture(scope="module")
def text_dirs(tmp_path_factory):
    return save_tiny_text_models(tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="module")
def cached(tmp_path_factory, clips, text_dirs):
    """Shards of 6 clips (via a manifest, through the CLI) with cached caption encodings."""
    root = tmp_path_factory.mktemp("cached")
    manifest = root / "manifest.jsonl"
    manifest.write_text(
        "".join(json.dumps({"path": c.path, "key": c.key, **c.metadata}) + "\n" for c in clips[:6])
    )
    t5, qwen = text_dirs
    args = [
        "write",
        str(manifest),
        str(root / "shards"),
        "--workers",
        "0",
        "--text-encoders",
        str(t5),
        str(qwen),
    ]
    assert main(args) == 0
    return root / "shards"


def test_shards_hold_fp16_encodings_and_their_encoders(cached, text_dirs):
    samples = [
        s for shard in sorted(cached.glob("*.tar")) for s in wds.WebDataset(str(shard), shardshuffle=False)
    ]
    assert len(samples) == 6
    conditioner = TextConditioner.from_pretrained(*text_dirs, dtype=torch.float32)
    for sample in samples:
        meta = json.loads(sample["json"])
        assert meta["text_cache"]["encoders"] == {"t5": str(text_dirs[0]), "qwen": str(text_dirs[1])}
        assert meta["text_cache"]["dims"] == {"t5": 24, "qwen": 20}
        online = conditioner.encode([meta["caption"]])
        for i, name in enumerate(TEXT_ENCODERS):
            stored = np.load(io.BytesIO(sample[f"text.{name}.npy"]))
            assert stored.dtype == np.float16 and stored.shape == (
                int(online.video_text_masks[i].sum()),
                meta["text_cache"]["dims"][name],
            )
            np.testing.assert_allclose(
                stored, online.video_texts[i][0].numpy()[: len(stored)], atol=2e-3, rtol=1e-2
            )
            null = np.load(io.BytesIO(sample[f"text_null.{name}.npy"]))
            np.testing.assert_allclose(
                null, conditioner.null(1).video_texts[i][0].numpy(), atol=2e-3, rtol=1e-2
            )


def test_the_pipeline_pads_them_and_caption_dropout_gives_the_null_encoding(cached, text_dirs):
    config = {
        "sources": [{"name": "a", "urls": str(cached)}],
        "shuffle_buffer": 1,
        "buckets": {"batch_size": 2, "resolutions": [[48, 64], [64, 48], [64, 64]], "frames": [25]},
        "tasks": {"caption_dropout": 0.5, "mutual_dropout": 0.0},
        "text_embeddings": ["t5", "qwen"],
    }
    conditioner = TextConditioner.from_pretrained(*text_dirs, dtype=torch.float32)
    batches = list(ResumableLoader(AVStream(PipelineConfig.from_dict(config)), num_workers=0))
    dropped = 0
    for b in batches:
        t = b.text_embeddings
        assert set(t) == {"t5", "t5_mask", "qwen", "qwen_mask"} and t["qwen"].dtype == torch.float16
        online = conditioner.encode(b.captions)  # "" (dropped) is the null caption
        dropped += b.captions.count("")
        for i, name in enumerate(TEXT_ENCODERS):
            assert torch.equal(t[f"{name}_mask"], online.video_text_masks[i])  # same padded layout
            torch.testing.assert_close(t[name].float(), online.video_texts[i], atol=2e-3, rtol=1e-2)
    assert dropped > 0 and sum(b.batch_size for b in batches) == 6
    config["text_embeddings"] = ["t5", "clip"]
    with pytest.raises(ValueError, match="unknown encoders"):
        PipelineConfig.from_dict(config)


def test_samples_without_cached_text_are_counted_skips(shards):
    config = {
        "sources": [{"name": "a", "urls": str(shards)}],
        "buckets": {"batch_size": 1, "resolutions": [[48, 64], [64, 48], [64, 64]], "frames": [25]},
        "text_embeddings": ["t5"],
    }
    loader = ResumableLoader(AVStream(PipelineConfig.from_dict(config)), num_workers=0)
    assert list(loader) == [] and loader.stats()["missing_text_embeddings"] == 24
