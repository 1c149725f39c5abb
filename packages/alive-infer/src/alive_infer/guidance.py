"""Guidance: small formulas, per-tower rules built from them, and the batched model call.

Formulas (tensors in, tensor out; each is tested against a transcription of its paper's equation):

- :func:`cfg`: u + s (c - u).
- :func:`apg`: the APG operation of Sadat et al. 2024 ("Eliminating oversaturation and artifacts of
  high guidance scales in diffusion models"), cited by seed 000 §4.4. Implemented: the projection
  (the guidance vector split into parts parallel and orthogonal to the reference prediction, per
  sample over all other dimensions, the parallel part scaled by eta), and, off by default, the
  paper's two other parts: the norm threshold r (the vector rescaled by min(1, r / ||vector||)) and
  reverse momentum beta (vector <- vector + beta * running, running <- that sum; the paper uses beta
  < 0). Order as in the paper's algorithm: momentum, threshold, projection.
- :func:`alive_guidance`: seed 000 eq. 4-7, the four states (pos/neg text x mutual on/off) with A
  applied to each of the three guidance vectors.
- :func:`dual_reference_cfg`: seed 000 eq. 9 (text and reference-image scales).
- :func:`multimodal_cfg`: seed 002 eq. 2; eq. 6 is the same formula where "no cross-modal signal"
  is the fusion's mutual-off state (for a CCL fusion, the learnable context tokens); eq. 5 is
  :class:`UCG`.

Velocity vs. epsilon. The seeds write guidance on epsilon; the model predicts the velocity
v = eps - x0 with x_t = (1 - t) x0 + t eps. For a fixed x_t and t, eps = x_t + (1 - t) v and
x0 = x_t - t v are affine in v, so every *linear* formula (CFG, eq. 2, eq. 7 with A = identity,
eq. 9) gives the same sample whether written on eps, x0 or v: we apply those to v directly. APG's
projection is not linear in the reference (eps, x0 and v predictions point in different directions),
so the space matters: we follow the APG paper, which projects on the *denoised* prediction D = x0.
The guidance vectors are x0 differences (-t times the v differences), the reference is the fully
conditioned x0 prediction (x_t - t v_pos,mutual: the conditional prediction of APG, and the common
first term of eq. 4-6), the threshold r is in x0 units, and the result goes back to a velocity
through v = (x_t - x0) / t. At t = 0 (a tower held clean) there is nothing to guide.

Batching. :class:`GuidedVelocity` evaluates every state a step needs (the union over both towers'
rules) in one forward of the model: latents repeated per state, text conditionings of different
lengths padded with masks, the per-sample ``mutual`` switch, and for eq. 9's "no reference" states
the per-sample ``reference_mask`` (the reference tokens stay in the sequence with their keys masked,
which gives those samples exactly the reference-free prediction).

One tower (T2V, T2A). The model runs that tower alone, so there is no cross-modal exchange and the
mutual switch changes nothing: (pos, indep) = (pos, mutual) and (neg, indep) = (neg, mutual). The
states collapse to pos / neg (two samples per forward) and each rule, evaluated as written, means:

- ``TowerGuidance`` (unguided): the positive prediction.
- ``CFG``: unchanged, n + s (p - n).
- ``UCG`` (CCL eq. 5): n + s (p - n), plain CFG.
- ``MultiModalCFG`` (CCL eq. 2): n + s_text (p - n); the cross-modal term is zero.
- ``AliveAPG`` (eq. 4-7): eq. 6's vector is zero and eq. 4 equals eq. 5, so it is APG-guided CFG
  n + (w1 + w2) A(p - n): scale 6 for the default video weights, 12 for the audio ones. With
  momentum, the two terms see the same vectors and keep equal running sums, so this stays exact.
- ``DualReferenceCFG`` (eq. 9): needs reference images, so it serves only a video tower of R2VA.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alive_models.joint import JointInputs
from alive_models.text import CaptionConditioning

# ---------------------------------------------------------------------------------------------------
# Formulas


def cfg(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""
    return uncond + scale * (cond - uncond)


def _per_sample(x: Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def project(vector: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """(parallel, orthogonal) parts of ``vector`` against ``reference``, per sample, in float64."""
    dims = _per_sample(vector)
    v, r = vector.double(), F.normalize(reference.double().flatten(1), dim=1).view_as(reference)
    parallel = (v * r).sum(dim=dims, keepdim=True) * r
    return parallel.to(vector.dtype), (v - parallel).to(vector.dtype)


@dataclass
class Momentum:
    """APG's reverse momentum: the running vector of one guidance term across evaluations."""

    beta: float
    running: Tensor | None = None

    def __call__(self, vector: Tensor) -> Tensor:
        self.running = vector if self.running is None else vector + self.beta * self.running
        return self.running


def apg(
    vector: Tensor,
    reference: Tensor,
    eta: float,
    norm_threshold: float | None = None,
    momentum: Momentum | None = None,
) -> Tensor:
    """APG's operation A on a guidance vector: momentum (optional), norm threshold (optional), then
    orthogonal part + eta * parallel part, with parallel meaning along ``reference``."""
    if momentum is not None:
        vector = momentum(vector)
    if norm_threshold is not None:
        norm = vector.double().flatten(1).norm(dim=1).view(-1, *([1] * (vector.ndim - 1)))
        vector = vector * (norm_threshold / norm).clamp(max=1.0).to(vector.dtype)
    parallel, orthogonal = project(vector, reference)
    return orthogonal + eta * parallel


def alive_guidance(
    pos_mutual: Tensor,
    pos_indep: Tensor,
    neg_mutual: Tensor,
    neg_indep: Tensor,
    weights: tuple[float, float, float],
    operation=None,
) -> Tensor:
    """Seed 000 eq. 4-7: neg_indep + w1 A(pm - ni) + w2 A(pm - nm) + w3 A(pm - pi).

    ``operation(vector, term_index)`` is A (identity when None); the predictions may be of any
    parameterisation as long as A is meant for it (see :class:`AliveAPG` for velocities).
    """
    a = operation or (lambda vector, _: vector)
    w1, w2, w3 = weights
    total = a(pos_mutual - neg_indep, 0)  # eq. 4
    text = a(pos_mutual - neg_mutual, 1)  # eq. 5
    mutual = a(pos_mutual - pos_indep, 2)  # eq. 6
    return neg_indep + w1 * total + w2 * text + w3 * mutual  # eq. 7


def dual_reference_cfg(uncond: Tensor, text: Tensor, text_ref: Tensor, s_txt: float, s_ref: float) -> Tensor:
    """Seed 000 eq. 9: e(0,0) + s_txt (e(txt,0) - e(0,0)) + s_ref (e(txt,ref) - e(txt,0))."""
    return uncond + s_txt * (text - uncond) + s_ref * (text_ref - text)


def multimodal_cfg(
    neg_indep: Tensor, pos_indep: Tensor, neg_mutual: Tensor, s_text: float, s_m: float
) -> Tensor:
    """Seed 002 eq. 2 (and eq. 6): v(u,0) + s_text (v(c,0) - v(u,0)) + s_m (v(u,c_m) - v(u,0))."""
    return neg_indep + s_text * (pos_indep - neg_indep) + s_m * (neg_mutual - neg_indep)


Tower = Literal["video", "audio"]

# ---------------------------------------------------------------------------------------------------
# States and per-tower rules


@dataclass(frozen=True, order=True)
class State:
    """One conditioning state of a guidance step.

    text: the positive caption or the negative one (the negative prompt, the null caption when none
    is given: it takes the place of every formula's unconditional text); mutual: the cross-modal
    exchange on or off for that sample; reference: the reference images fed (R2VA; ignored when the
    request has none).
    """

    text: Literal["pos", "neg"]
    mutual: bool
    reference: bool = True


PM, PI, NM, NI = State("pos", True), State("pos", False), State("neg", True), State("neg", False)


@dataclass(frozen=True)
class TowerGuidance:
    """A per-tower rule: which states it reads and how it combines their velocities."""

    kind: ClassVar[str] = "none"
    states: ClassVar[tuple[State, ...]] = (PM,)

    def combine(self, v: dict[State, Tensor], x: Tensor, t: Tensor, memory: dict) -> Tensor:
        return v[PM]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class CFG(TowerGuidance):
    """Plain CFG between the negative and positive captions (mutual on for both)."""

    scale: float = 5.0
    kind: ClassVar[str] = "cfg"
    states: ClassVar[tuple[State, ...]] = (NM, PM)

    def combine(self, v, x, t, memory):
        return cfg(v[NM], v[PM], self.scale)


@dataclass(frozen=True)
class UCG(TowerGuidance):
    """Seed 002 eq. 5: one scale between (negative text, no cross-modal) and (positive, mutual)."""

    scale: float = 5.0
    kind: ClassVar[str] = "ucg"
    states: ClassVar[tuple[State, ...]] = (NI, PM)

    def combine(self, v, x, t, memory):
        return cfg(v[NI], v[PM], self.scale)


@dataclass(frozen=True)
class MultiModalCFG(TowerGuidance):
    """Seed 002 eq. 2 / eq. 6: separate text and cross-modal scales."""

    s_text: float = 5.0
    s_m: float = 2.0
    kind: ClassVar[str] = "multimodal"
    states: ClassVar[tuple[State, ...]] = (NI, PI, NM)

    def combine(self, v, x, t, memory):
        return multimodal_cfg(v[NI], v[PI], v[NM], self.s_text, self.s_m)


@dataclass(frozen=True)
class DualReferenceCFG(TowerGuidance):
    """Seed 000 eq. 9: text scale and reference-image scale (mutual on throughout)."""

    s_txt: float = 5.0
    s_ref: float = 2.0
    kind: ClassVar[str] = "dual_reference"
    states: ClassVar[tuple[State, ...]] = (
        State("neg", True, reference=False),
        State("pos", True, reference=False),
        State("pos", True, reference=True),
    )

    def combine(self, v, x, t, memory):
        uncond, text, text_ref = (v[s] for s in self.states)
        return dual_reference_cfg(uncond, text, text_ref, self.s_txt, self.s_ref)


@dataclass(frozen=True)
class AliveAPG(TowerGuidance):
    """Seed 000 eq. 4-7 with APG on each guidance vector, applied to velocities through x0 (see the
    module docstring). Defaults are the seed's video setting; :meth:`audio_default` the audio one."""

    w1: float = 3.0
    w2: float = 3.0
    w3: float = 3.0
    eta: float = 0.5
    norm_threshold: float | None = None  # APG's r, in x0 units; None = off
    momentum: float | None = None  # APG's beta (< 0 in the paper); None = off
    kind: ClassVar[str] = "alive_apg"
    states: ClassVar[tuple[State, ...]] = (PM, PI, NM, NI)

    @classmethod
    def video_default(cls) -> AliveAPG:
        return cls(3.0, 3.0, 3.0, eta=0.5)

    @classmethod
    def audio_default(cls) -> AliveAPG:
        return cls(2.0, 10.0, 2.0, eta=0.2)

    def combine(self, v, x, t, memory):
        t = t.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        if not torch.all(t > 0):
            return v[PM]  # a clean tower (t = 0) has no noise to guide
        reference = x - t * v[PM]  # the conditional x0 prediction
        if self.momentum is not None and not memory:
            memory.update({i: Momentum(self.momentum) for i in range(3)})

        def operation(v_difference: Tensor, term: int) -> Tensor:
            x0_difference = -t * v_difference
            a = apg(x0_difference, reference, self.eta, self.norm_threshold, memory.get(term))
            return -a / t  # back to velocity units: the x0 update is exactly -t times it

        return alive_guidance(v[PM], v[PI], v[NM], v[NI], (self.w1, self.w2, self.w3), operation)


RULES: dict[str, type[TowerGuidance]] = {
    c.kind: c for c in (TowerGuidance, CFG, UCG, MultiModalCFG, DualReferenceCFG, AliveAPG)
}


def rule_from_dict(data: dict[str, Any]) -> TowerGuidance:
    """Inverse of ``TowerGuidance.to_dict`` (JSON sidecars, command lines)."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in RULES:
        raise ValueError(f"unknown guidance kind {kind!r}; choose one of {sorted(RULES)}")
    return RULES[kind](**data)


@dataclass(frozen=True)
class Guidance:
    """One rule per tower. Defaults: ALIVE's multi-condition APG with the seed's per-tower weights."""

    video: TowerGuidance = field(default_factory=AliveAPG.video_default)
    audio: TowerGuidance = field(default_factory=AliveAPG.audio_default)

    @property
    def states(self) -> tuple[State, ...]:
        """The union of both rules' states, in a fixed order (the batch layout of a step)."""
        return tuple(sorted(set(self.video.states) | set(self.audio.states)))

    def to_dict(self) -> dict[str, Any]:
        return {"video": self.video.to_dict(), "audio": self.audio.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Guidance:
        return cls(rule_from_dict(data["video"]), rule_from_dict(data["audio"]))

    @classmethod
    def unguided(cls) -> Guidance:
        """The plain conditional prediction for both towers (one state: validation's cheap path)."""
        return cls(TowerGuidance(), TowerGuidance())


GUIDANCE_PRESETS: dict[str, Callable[[], Guidance]] = {
    "alive": Guidance,  # seed 000 eq. 4-7 with APG: video w=(3,3,3) eta=0.5, audio w=(2,10,2) eta=0.2
    "cfg": lambda: Guidance(CFG(), CFG()),
    "ucg": lambda: Guidance(UCG(), UCG()),  # CCL eq. 5
    "ucg-decoupled": lambda: Guidance(MultiModalCFG(), MultiModalCFG()),  # CCL eq. 6 (= eq. 2's form)
    "multimodal": lambda: Guidance(MultiModalCFG(), MultiModalCFG()),  # CCL eq. 2 / 6
    "dual-reference": lambda: Guidance(DualReferenceCFG(), AliveAPG.audio_default()),  # eq. 9, R2VA
    "none": Guidance.unguided,
}


def parse_guidance(text: str, default: Guidance | None = None) -> Guidance:
    """Guidance from a command line: a preset name (:data:`GUIDANCE_PRESETS`), a JSON object
    ``{"video": {"kind": ..., ...}, "audio": {...}}`` or the path of a file holding one. A tower the
    JSON leaves out keeps ``default``'s rule (ALIVE's when None)."""
    text = text.strip()
    if text in GUIDANCE_PRESETS:
        return GUIDANCE_PRESETS[text]()
    source = "guidance JSON"
    if not text.startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise ValueError(
                f"guidance {text!r} is not a preset ({', '.join(GUIDANCE_PRESETS)}), a JSON object or a file"
            )
        source, text = str(path), path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not data or set(data) - {"video", "audio"}:
        raise ValueError(f'{source} must be an object with "video" and/or "audio" rules, got {data!r}')
    base = default or Guidance()
    try:
        rules = {t: rule_from_dict(data[t]) if t in data else getattr(base, t) for t in ("video", "audio")}
    except (TypeError, ValueError) as e:  # an unknown kind, a field the rule does not have
        raise ValueError(f"{source}: {e}") from None
    return Guidance(**rules)


# ---------------------------------------------------------------------------------------------------
# Text conditionings of different lengths in one batch


def _pad_to(x: Tensor, length: int, value: float | bool | int = 0) -> Tensor:
    pad = length - x.shape[1]
    if pad == 0:
        return x
    if x.ndim == 2:
        return F.pad(x, (0, pad), value=value)
    return F.pad(x, (0, 0, 0, pad), value=value)


def _pad_pair(tensors: list[Tensor], masks: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    length = max(t.shape[1] for t in tensors)
    return [_pad_to(t, length) for t in tensors], [_pad_to(m.bool(), length, False) for m in masks]


def pad_conditionings(items: list[CaptionConditioning]) -> list[CaptionConditioning]:
    """Pad every sequence field to the longest among ``items`` (zeros, mask False): conditionings
    of different lengths can then be concatenated into one batch; masked keys change nothing."""
    n_enc = len(items[0].video_texts)
    video = [
        _pad_pair([c.video_texts[i] for c in items], [c.video_text_masks[i] for c in items])
        for i in range(n_enc)
    ]
    caption = _pad_pair([c.audio_caption for c in items], [c.audio_caption_mask for c in items])
    transcript = _pad_pair([c.transcript_ids for c in items], [c.transcript_mask for c in items])
    return [
        CaptionConditioning(
            video_texts=[video[i][0][k] for i in range(n_enc)],
            video_text_masks=[video[i][1][k] for i in range(n_enc)],
            audio_caption=caption[0][k],
            audio_caption_mask=caption[1][k],
            transcript_ids=transcript[0][k],
            transcript_mask=transcript[1][k],
        )
        for k in range(len(items))
    ]


def _cat(items: list[CaptionConditioning]) -> CaptionConditioning:
    return CaptionConditioning(
        video_texts=[torch.cat(ts) for ts in zip(*(c.video_texts for c in items), strict=True)],
        video_text_masks=[torch.cat(ms) for ms in zip(*(c.video_text_masks for c in items), strict=True)],
        audio_caption=torch.cat([c.audio_caption for c in items]),
        audio_caption_mask=torch.cat([c.audio_caption_mask for c in items]),
        transcript_ids=torch.cat([c.transcript_ids for c in items]),
        transcript_mask=torch.cat([c.transcript_mask for c in items]),
    )


# ---------------------------------------------------------------------------------------------------
# The guided velocity: what the sampler calls


class GuidedVelocity:
    """``velocity(x_video, x_audio, t_video, t_audio)`` for :func:`alive_infer.sampling.sample`:
    all states of a step through ``model`` (one batched forward unless ``batched=False``, which runs
    each state on its own: the benchmark's baseline), then each tower's rule.

    positive / negative: the captions' conditioning ([B, ...] each; the negative one is usually the
    null caption or the negative prompt). video_condition ([B, C+mask, T, H, W], I2V) and references
    ([B, K, C, H, W], R2VA) are fed to every state; a state with reference=False gets them masked
    (``JointInputs.reference_mask``) in the batched forward and left out in a separate one.
    reference_audio ([B, C_a, L_ref] latents, TR2AV voice cloning) conditions the audio tower in every
    state, like the first frame of I2V: the guidance rules contrast text and cross-modal states, and
    the voice is part of every one of them.
    towers: the towers being generated; with one (T2V, T2A) the other is absent from every forward
    and the mutual switch has nothing to switch (see the module docstring).
    One instance serves one sampling run (APG momentum keeps state across its calls).
    """

    def __init__(
        self,
        model: nn.Module,
        positive: CaptionConditioning,
        negative: CaptionConditioning | None,
        guidance: Guidance,
        video_condition: Tensor | None = None,
        references: Tensor | None = None,
        batched: bool = True,
        towers: tuple[Tower, ...] = ("video", "audio"),
        reference_audio: Tensor | None = None,
    ) -> None:
        if not towers or set(towers) - {"video", "audio"}:
            raise ValueError(f"towers must be a non-empty subset of ('video', 'audio'), got {towers}")
        self.model, self.guidance, self.batched = model, guidance, batched
        self.towers = tuple(t for t in ("video", "audio") if t in towers)
        self.video_condition, self.references = video_condition, references
        self.rules = {t: getattr(guidance, t) for t in self.towers}
        self.states = tuple(sorted({self.key(s) for rule in self.rules.values() for s in rule.states}))
        if negative is None and any(s.text == "neg" for s in self.states):
            raise ValueError(f"guidance {guidance.to_dict()} needs a negative (or null) caption conditioning")
        if references is not None and "video" not in self.towers:
            raise ValueError("reference images condition the video tower, which this run does not generate")
        if reference_audio is not None and "audio" not in self.towers:
            raise ValueError("reference audio conditions the audio tower, which this run does not generate")
        self.reference_audio = reference_audio
        self.texts = (
            {"pos": positive}
            if negative is None
            else dict(zip(("pos", "neg"), pad_conditionings([positive, negative]), strict=True))
        )
        self.groups = [self.states] if batched else [(s,) for s in self.states]
        self.memory: dict[str, dict] = {"video": {}, "audio": {}}
        self.forwards = 0  # model calls made (benchmarks, tests)
        self._text: dict[tuple[State, ...], CaptionConditioning] = {}
        param = next(model.parameters(), None)
        self.dtype = param.dtype if param is not None else torch.float32

    def key(self, state: State) -> State:
        """The state a rule's state is computed as: without references every state has the same
        (absent) ones, and with one tower "indep" is "mutual" (there is no exchange to switch off)."""
        return dataclasses.replace(
            state,
            mutual=state.mutual or len(self.towers) == 1,
            reference=state.reference or self.references is None,
        )

    def _inputs(
        self, states: tuple[State, ...], xv: Tensor | None, xa: Tensor | None, tv: Tensor, ta: Tensor
    ) -> JointInputs:
        n = len(states)
        if states not in self._text:  # the text batch of a group is the same every step
            self._text[states] = _cat([self.texts[s.text] for s in states])
        text = self._text[states]
        b = (xv if xv is not None else xa).shape[0]
        device = (xv if xv is not None else xa).device

        def rep(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.repeat(n, *([1] * (x.ndim - 1)))

        def flags(values: list[bool]) -> Tensor | None:  # None when all True: no masking at all
            return None if all(values) else torch.tensor(values, device=device).repeat_interleave(b)

        cast = self.dtype
        video = xv is not None
        refs = self.references if video and any(s.reference for s in states) else None
        return JointInputs(
            video=rep(xv).to(cast) if video else None,
            audio=rep(xa).to(cast) if xa is not None else None,
            t_video=rep(tv),
            t_audio=rep(ta),
            video_texts=[v.to(cast) for v in text.video_texts],
            video_text_masks=text.video_text_masks,
            audio_caption=text.audio_caption.to(cast),
            audio_caption_mask=text.audio_caption_mask,
            transcript_ids=text.transcript_ids,
            transcript_mask=text.transcript_mask,
            video_condition=rep(self.video_condition).to(cast)
            if video and self.video_condition is not None
            else None,
            references=None if refs is None else rep(refs).to(cast),
            reference_mask=None if refs is None else flags([s.reference for s in states]),
            mutual=flags([s.mutual for s in states]),
            reference_audio=None
            if xa is None or self.reference_audio is None
            else rep(self.reference_audio).to(cast),
        )

    @torch.no_grad()
    def predictions(
        self, xv: Tensor | None, xa: Tensor | None, tv: Tensor, ta: Tensor
    ) -> dict[State, tuple[Tensor | None, Tensor | None]]:
        """Velocity of every state: {state: (v_video, v_audio)}, float32 (None for an absent tower)."""
        out: dict[State, tuple[Tensor | None, Tensor | None]] = {}
        b = (xv if xv is not None else xa).shape[0]
        for states in self.groups:
            pred = self.model(self._inputs(states, xv, xa, tv, ta))
            self.forwards += 1
            for i, s in enumerate(states):
                out[s] = tuple(
                    None if p is None else p[i * b : (i + 1) * b].float() for p in (pred.video, pred.audio)
                )
        return out

    def __call__(
        self, xv: Tensor | None, xa: Tensor | None, tv: Tensor, ta: Tensor
    ) -> tuple[Tensor | None, Tensor | None]:
        given = tuple(t for t, x in (("video", xv), ("audio", xa)) if x is not None)
        if given != self.towers:
            raise ValueError(f"this guided velocity generates {self.towers}, but was called with {given}")
        preds = self.predictions(xv, xa, tv, ta)
        out: dict[str, Tensor | None] = {"video": None, "audio": None}
        for index, (tower, x, t) in enumerate((("video", xv, tv), ("audio", xa, ta))):
            if tower in self.rules:
                rule = self.rules[tower]
                v = {s: preds[self.key(s)][index] for s in rule.states}
                out[tower] = rule.combine(v, x.float(), t, self.memory[tower])
        return out["video"], out["audio"]
