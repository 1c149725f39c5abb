"""Random inputs of the right shapes for a config: tests, benchmarks and ``alive-models smoke``."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from alive_models.config import JointConfig
from alive_models.joint import JointInputs, i2v_condition


def random_inputs(
    config: JointConfig,
    batch: int = 2,
    latent_frames: int = 3,
    height: int = 4,
    width: int = 6,
    text_lengths: tuple[int, ...] | None = None,
    caption_length: int = 7,
    transcript_length: int = 4,
    i2v: bool = False,
    references: int = 0,
    generator: torch.Generator | None = None,
) -> JointInputs:
    """Gaussian latents and encodings; the audio length follows the clip duration on the timeline."""
    v, a, tl = config.video, config.audio, config.timeline
    frames = (
        (latent_frames - 1) * tl.temporal_stride + 1
        if tl.causal_first_frame
        else latent_frames * tl.temporal_stride
    )
    audio_length = math.ceil(frames / tl.fps * tl.audio_latent_rate)
    text_lengths = text_lengths or tuple(5 + 2 * i for i in range(len(v.text_dims)))

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    video = randn(batch, v.latent_channels, latent_frames, height, width)
    condition = None
    if i2v:
        condition = i2v_condition(
            randn(batch, v.latent_channels, 1, height, width), latent_frames, v.mask_channels
        )
    return JointInputs(
        video=video,
        audio=randn(batch, a.in_channels, audio_length),
        t_video=torch.rand(batch, generator=generator),
        t_audio=torch.rand(batch, generator=generator),
        video_texts=[randn(batch, n, d) for n, d in zip(text_lengths, v.text_dims, strict=True)],
        audio_caption=randn(batch, caption_length, a.caption_dim),
        transcript_ids=torch.randint(
            0, a.transcript_vocab_size, (batch, transcript_length), generator=generator
        ),
        video_condition=condition,
        references=randn(batch, references, v.latent_channels, height, width) if references else None,
    )


def call_order(model: torch.nn.Module, inputs: JointInputs) -> list[str]:
    """Names of the blocks and exchange modules in the order one forward runs them."""
    order, handles = [], []
    named = {
        "v": list(model.video.dual_blocks) + list(model.video.single_blocks),
        "a": list(model.audio.blocks),
        "v<-a": list(model.fusion.video_from_audio),
        "a<-v": list(model.fusion.audio_from_video),
    }
    for prefix, modules in named.items():
        for i, m in enumerate(modules):
            handles.append(m.register_forward_pre_hook(lambda *_, n=f"{prefix}{i}": order.append(n)))
    with torch.no_grad():
        model(inputs)
    for h in handles:
        h.remove()
    return order


def randomize_zero_inits(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Give zero-initialised parameters (AdaLN-Zero gates, heads, fusion gates) random values, so a
    freshly built model exercises every path as a trained one would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(scale * torch.randn(p.shape, generator=g).to(p.dtype))


TINY_CORPUS = (
    "Subjects: Subject1: A man with a clear voice. Visual: A kitchen. Narration: Subject1 says hello "
    "the vegetables are sold out accompanied by sizzling steak sounds footsteps rain door opening"
)


def save_tiny_text_models(
    root: Path, t5_dim: int = 24, qwen_dim: int = 20, seed: int = 0
) -> tuple[Path, Path]:
    """Write a tiny random T5 encoder and a tiny Qwen2 LM in Hugging Face format under ``root``;
    returns (t5_dir, qwen_dir). For tests and the demo only.

    Their tokenizers are trained here and are of the real kinds (Unigram with Metaspace for T5,
    byte-level BPE for Qwen), because AutoTokenizer loads them through the model type's own
    tokenizer class, exactly as it does real checkpoints.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, T5Config, T5EncoderModel

    corpus = [TINY_CORPUS] * 3
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet),
    )
    qwen_tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    unigram.train_from_iterator(
        corpus,
        trainers.UnigramTrainer(vocab_size=100, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"),
    )
    t5_tok = PreTrainedTokenizerFast(
        tokenizer_object=unigram, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )

    torch.manual_seed(seed)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=t5_dim,
            d_kv=8,
            d_ff=2 * t5_dim,
            num_layers=2,
            num_heads=2,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    eos = qwen_tok.eos_token_id
    qwen = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(qwen_tok),
            hidden_size=qwen_dim,
            intermediate_size=2 * qwen_dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            pad_token_id=eos,
            eos_token_id=eos,
            bos_token_id=eos,
        )
    )
    dirs = (root / "t5", root / "qwen")
    for model, tokenizer, directory in zip((t5, qwen), (t5_tok, qwen_tok), dirs, strict=True):
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return dirs


def save_tiny_vaes(root: Path, audio_channels: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """Write a tiny random Wan2.1-format video VAE (16 channels, 8x spatial, 4x causal temporal) and a
    tiny Oobleck audio VAE (16 kHz mono, 640 hop = 25 latents/s) under ``root``; returns their dirs.
    The geometry is the real one, the weights are random. Needs the ``vae`` extra (diffusers)."""
    from diffusers import AutoencoderKLWan, AutoencoderOobleck

    torch.manual_seed(seed)
    wan, oobleck = root / "wan", root / "oobleck"
    AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).save_pretrained(wan)
    AutoencoderOobleck(
        encoder_hidden_size=2 * audio_channels,
        downsampling_ratios=[2, 4, 4, 5, 4],
        channel_multiples=[1, 2, 2, 2, 2],
        decoder_channels=8,
        decoder_input_channels=audio_channels,
        audio_channels=1,
        sampling_rate=16_000,
    ).save_pretrained(oobleck)
    return wan, oobleck
