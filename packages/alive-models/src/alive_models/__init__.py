"""alive_models: the ALIVE Joint Audio-Video DiT, torch only.

Public entry points: configs and presets, the towers, the joint model, rectified-flow helpers,
the FLOPs model and (in ``alive_models.parallel``) the FSDP2 plan.
"""

from alive_models.audio_dit import AudioDiT
from alive_models.config import PRESETS, AudioDiTConfig, FusionConfig, JointConfig, VideoDiTConfig, get_preset
from alive_models.geometry import Timeline, unitemp_audio_positions, unitemp_video_positions
from alive_models.joint import JointAVDiT, JointInputs, JointOutputs, build_model, i2v_condition, materialize
from alive_models.video_dit import VideoDiT

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AudioDiT",
    "AudioDiTConfig",
    "FusionConfig",
    "JointAVDiT",
    "JointConfig",
    "JointInputs",
    "JointOutputs",
    "Timeline",
    "VideoDiT",
    "VideoDiTConfig",
    "build_model",
    "get_preset",
    "i2v_condition",
    "materialize",
    "unitemp_audio_positions",
    "unitemp_video_positions",
]
