"""Where the towers meet: which audio block has run before the exchange after each video block, and
the one loop that interleaves the towers for every fusion kind."""

from __future__ import annotations

import math
from collections.abc import Callable

from alive_models.audio_dit import AudioDiT, AudioState
from alive_models.config import JointConfig
from alive_models.video_dit import VideoDiT, VideoState


def relative_depth_pairing(num_video_blocks: int, num_audio_blocks: int) -> tuple[int, ...]:
    """For each video block i, the audio block reached at the same relative depth: ceil((i+1)Na/Nv) - 1."""
    return tuple(
        math.ceil((i + 1) * num_audio_blocks / num_video_blocks) - 1 for i in range(num_video_blocks)
    )


def dual_stream_pairing(num_dual: int, num_single: int, num_audio_blocks: int) -> tuple[int, ...]:
    """The audio tower runs beside the dual-stream blocks (relative depth over them) and is finished
    before the single-stream blocks, which all read its final states."""
    return relative_depth_pairing(num_dual, num_audio_blocks) + (num_audio_blocks - 1,) * num_single


def tower_pairing(config: JointConfig) -> tuple[int, ...]:
    """``FusionConfig.pairing`` resolved to one audio block index per video block, validated."""
    v, a, rule = config.video, config.audio, config.fusion.pairing
    if rule == "dual_stream":
        pairing = dual_stream_pairing(v.num_dual_blocks, v.num_single_blocks, a.num_blocks)
    elif rule == "relative_depth":
        pairing = relative_depth_pairing(v.num_blocks, a.num_blocks)
    else:
        pairing = tuple(rule)
    if len(pairing) != v.num_blocks or list(pairing) != sorted(pairing):
        raise ValueError(
            f"pairing must give a non-decreasing audio block for each of {v.num_blocks} video blocks"
        )
    if not all(0 <= j < a.num_blocks for j in pairing):
        raise ValueError(f"pairing refers to audio blocks outside 0..{a.num_blocks - 1}")
    return pairing


# exchange(video block index, video state, audio state) -> both states after the exchange.
Exchange = Callable[[int, VideoState, AudioState], tuple[VideoState, AudioState]]
# after_audio(audio block index, video state, audio state) -> the audio state after its update.
AfterAudio = Callable[[int, VideoState, AudioState], AudioState]


def interleave(
    video: VideoDiT,
    audio: AudioDiT,
    vs: VideoState,
    as_: AudioState,
    pairing: tuple[int, ...],
    exchange: Exchange,
    after_audio: AfterAudio | None = None,
) -> tuple[VideoState, AudioState]:
    """Run both towers to the end: after video block i the audio tower has run up to block
    ``pairing[i]`` (each audio block followed by ``after_audio``, if given), then ``exchange`` runs.
    Audio blocks the pairing leaves for last run after the final video block."""
    audio_done = 0

    def run_audio_to(last: int, vs: VideoState, as_: AudioState) -> AudioState:
        nonlocal audio_done
        while audio_done <= last:
            as_ = audio.run_block(audio_done, as_)
            if after_audio is not None:
                as_ = after_audio(audio_done, vs, as_)
            audio_done += 1
        return as_

    for i, audio_target in enumerate(pairing):
        vs = video.run_block(i, vs)
        as_ = run_audio_to(audio_target, vs, as_)
        vs, as_ = exchange(i, vs, as_)
    return vs, run_audio_to(len(audio.blocks) - 1, vs, as_)
