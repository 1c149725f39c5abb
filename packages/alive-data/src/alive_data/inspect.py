"""``alive-data inspect``: what is in a set of shards and what is wrong with it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from alive_data.samples import BadSample, load_sample, read_metadata, recorded_format
from alive_data.shards import iter_samples

DURATION_BINS = (2.0, 5.0, 10.0, 20.0)


def duration_bin(seconds: float) -> str:
    low = 0.0
    for high in DURATION_BINS:
        if seconds < high:
            return f"{low:g}-{high:g}s"
        low = high
    return f">={low:g}s"


@dataclass
class InspectReport:
    """Counts, histograms and the bad samples of a set of shards."""

    shards: int = 0
    samples: int = 0
    valid: int = 0
    members: Counter = field(default_factory=Counter)
    bad: Counter = field(default_factory=Counter)
    bad_samples: list[dict[str, str]] = field(default_factory=list)
    caption_problems: Counter = field(default_factory=Counter)
    durations: Counter = field(default_factory=Counter)
    resolutions: Counter = field(default_factory=Counter)
    categories: Counter = field(default_factory=Counter)
    speaking: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {k: dict(v.most_common()) if isinstance(v, Counter) else v for k, v in vars(self).items()}


def inspect_shards(urls: list[str], decode: bool = False, progress: bool = True) -> InspectReport:
    """Read every sample; with ``decode`` also decode media/latents (finds undecodable clips, NaNs),
    each in the format (fps, sample rate, latent geometry) its metadata records."""
    report = InspectReport(shards=len(urls))

    def on_error(url: str, exn: Exception) -> None:
        report.bad["corrupt_tar"] += 1
        report.bad_samples.append(
            {"key": "", "shard": url, "reason": "corrupt_tar", "detail": str(exn)[:200]}
        )

    for raw in tqdm(iter_samples(urls, on_error), desc="inspecting", unit="sample", disable=not progress):
        report.samples += 1
        report.members.update(k for k in raw if not k.startswith("__"))
        try:
            meta, _ = read_metadata(raw)
            if decode:
                latents = "video_latent.npy" in raw and "mp4" not in raw
                load_sample(raw, recorded_format(meta), latents=latents)
        except BadSample as e:
            report.bad[e.reason] += 1
            if e.reason == "malformed_caption":
                report.caption_problems[e.detail.split(": ", 1)[-1]] += 1
            report.bad_samples.append(
                {"key": raw["__key__"], "shard": raw["__url__"], "reason": e.reason, "detail": e.detail[:200]}
            )
            continue
        report.valid += 1
        report.durations[duration_bin(meta["duration"])] += 1
        report.resolutions[f"{meta['width']}x{meta['height']}"] += 1
        report.categories[meta.get("category", {}).get("l1", "unlabeled")] += 1
        report.speaking["speaking" if meta.get("speaking") else "non-speaking"] += 1
    return report


def format_report(report: InspectReport) -> str:
    lines = [f"{report.shards} shards, {report.samples} samples, {report.valid} valid"]
    for title, counter in (
        ("members", report.members),
        ("bad samples by reason", report.bad),
        ("caption problems", report.caption_problems),
        ("duration", report.durations),
        ("resolution", report.resolutions),
        ("L1 category", report.categories),
        ("speaking", report.speaking),
    ):
        if counter:
            lines.append(f"{title}:")
            lines += [f"  {name:<40} {count:>8}" for name, count in counter.most_common()]
    if report.bad_samples:
        lines.append("bad samples:")
        lines += [
            f"  {b['shard']} {b['key'] or '-'}: {b['reason']} {b['detail']}" for b in report.bad_samples[:50]
        ]
        if len(report.bad_samples) > 50:
            lines.append(f"  ... and {len(report.bad_samples) - 50} more (use --json for all)")
    return "\n".join(lines)
