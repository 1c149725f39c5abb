"""Peak host memory of loading the caption encoders through alive_models.text, in fresh processes.

    uv run python tooling/measure_encoder_loading.py [--scale 8]

Builds a T5 encoder and a Qwen2 LM (tiny by default; ``--scale`` widens them), saves them as sharded
safetensors, then loads each in its own interpreter in bf16 and reports the growth of peak RSS over the
interpreter's baseline (transformers imported) next to the bf16 weight size. RSS also counts the
memory-mapped safetensors pages (reclaimable page cache), so the anonymous memory is sampled too:
about 1x the weights means they were streamed into place once; 2x or more would mean a random
init plus a copy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path


def _rss(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(path: str, kind: str) -> None:
    import torch
    import transformers  # noqa: F401  (baseline includes the library)

    from alive_models.text import CaptionEncoder

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
    base, base_anon = _rss("VmRSS"), _rss("RssAnon")
    peak_anon = base_anon
    done = threading.Event()

    def sample() -> None:  # the kernel keeps no peak of anonymous memory: sample it
        nonlocal peak_anon
        while not done.wait(0.002):
            peak_anon = max(peak_anon, _rss("RssAnon"))

    sampler = threading.Thread(target=sample)
    sampler.start()
    encoder = CaptionEncoder.from_pretrained(path, kind, dtype=torch.bfloat16)
    done.set()
    sampler.join()
    peak_anon = max(peak_anon, _rss("RssAnon"))
    weights = sum(p.numel() * p.element_size() for p in encoder.model.parameters())
    print(
        json.dumps(
            {"peak_growth": _rss("VmHWM") - base, "anon_growth": peak_anon - base_anon, "bf16_bytes": weights}
        )
    )


def build(root: Path, scale: int) -> tuple[Path, Path]:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, T5Config, T5EncoderModel

    from alive_models.testing import save_tiny_text_models

    t5_dir, qwen_dir = save_tiny_text_models(root / "tiny")
    if scale == 1:
        return t5_dir, qwen_dir
    # Same tokenizers, wider models, saved in several shards like real checkpoints.
    torch.manual_seed(0)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=32_000, d_model=64 * scale, d_kv=64, d_ff=256 * scale, num_layers=8, num_heads=scale
        )
    )
    qwen = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=32_000,
            hidden_size=64 * scale,
            intermediate_size=256 * scale,
            num_hidden_layers=8,
            num_attention_heads=scale,
            num_key_value_heads=1,
        )
    )
    wide = []
    for model, tiny_dir in ((t5, t5_dir), (qwen, qwen_dir)):
        out = root / f"{tiny_dir.name}-wide"
        model.to(torch.bfloat16).save_pretrained(out, max_shard_size="40MB")  # bf16 on disk, as released
        AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(out)
        wide.append(out)
    return wide[0], wide[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale", type=int, default=1, help="1 = the tiny test models; 8 = ~100M parameters each"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        t5_dir, qwen_dir = build(Path(tmp), args.scale)
        for name, path, kind in (("T5 encoder", t5_dir, "encoder"), ("Qwen2 LM", qwen_dir, "decoder")):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(path), kind],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            mib = 2**20
            print(
                f"{name:<11} bf16 weights {r['bf16_bytes'] / mib:7.1f} MiB | peak RSS growth "
                f"{r['peak_growth'] / mib:7.1f} MiB (incl. mapped file pages) | peak anonymous growth "
                f"{r['anon_growth'] / mib:7.1f} MiB"
            )


if __name__ == "__main__":
    main()
