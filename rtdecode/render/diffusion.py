"""The diffusion renderer: a few flow-matching steps from the noised blurry video (SDEdit).

NeuroClips starts its video diffusion from the noised blurry reconstruction instead of pure
noise, so the low-level layout and motion decoded from fMRI survive while the denoiser adds
the detail the conditions call for. Here that start is ``x = (1 - s)·blurry + s·noise`` at
flow time ``s = strength`` (rectified flow), followed by ``steps`` Euler steps of diffusers'
:class:`~diffusers.FlowMatchEulerDiscreteScheduler` from ``s`` to 0.

The few-step pitfall: diffusers' image-to-image pipelines keep ``int(steps × strength)`` of
the schedule, so e.g. 2 steps at strength 0.4 run *no* denoising and return the noised
input. The schedule here is built on ``[strength, 0]`` directly, so every call runs exactly
``steps`` (≥ 1) steps whatever the strength.

On a same-scene boundary (multi-fMRI fusion) the first frames' start latents are pulled
towards the previous clip's last latent, so the new clip continues where the last one ended.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from rtdecode.conditions import Conditions
from rtdecode.models.video_denoiser import VideoDenoiser, condition_inputs
from rtdecode.render import Renderer

__all__ = [
    "CaptionEncoder",
    "DiffusionRenderer",
    "diffusion_renderer",
    "flow_schedule",
    "renderer_autoencoder",
    "sample_flow",
]


_SCHEDULERS = threading.local()


def flow_schedule(steps: int, strength: float) -> FlowMatchEulerDiscreteScheduler:
    """A scheduler set to ``max(steps, 1)`` Euler steps from ``strength`` down to 0.

    One scheduler per thread, reset by ``set_timesteps`` on every call: constructing a diffusers
    scheduler (its config registration) costs more than a TR's sampler arithmetic.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    sched = getattr(_SCHEDULERS, "sched", None)
    if sched is None:
        sched = _SCHEDULERS.sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    n = max(int(steps), 1)
    sched.set_timesteps(sigmas=np.linspace(strength, 0.0, n + 1)[:-1].tolist())
    return sched


@torch.no_grad()
def sample_flow(
    model: VideoDenoiser,
    x: torch.Tensor,
    channels: torch.Tensor,
    tokens: torch.Tensor,
    steps: int,
    strength: float,
) -> torch.Tensor:
    """Integrate the velocity field from flow time ``strength`` (state ``x``) to 0."""
    sched = flow_schedule(steps, strength)
    for t in sched.timesteps:
        tt = torch.full((x.shape[0],), float(t) / 1000.0)
        x = sched.step(model(x, tt, channels, tokens), t, x).prev_sample
    return x


class CaptionEncoder:
    """Captions → ``(N, D)`` float32 world-CLIP text embeddings: the renderer's caption condition.

    A class rather than a closure so that :func:`~rtdecode.backends.compile_render_stage` can
    put its network (:meth:`embed`) on a compiled engine; tokenisation stays in Python.
    """

    def __init__(self, clip: torch.nn.Module) -> None:
        self.clip = clip

    def tokens(self, texts: list[str]) -> torch.Tensor:
        """``(N, L)`` token ids."""
        return self.clip.tokenize(texts)

    @torch.no_grad()
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids → L2-normalised ``(N, D)`` embeddings."""
        return self.clip.encode_tokens(tokens)

    def __call__(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.embed(self.tokens(texts)), np.float32)


class DiffusionRenderer(Renderer):
    """Renders a clip from decoded conditions with a (distilled) video denoiser.

    Parameters
    ----------
    denoiser
        The velocity model (teacher or student).
    autoencoder
        Decodes latents to frames.
    text_encoder
        Callable ``list[str] -> (N, D)`` embeddings of captions (the world-CLIP text tower).
    steps, strength
        Sampler steps and SDEdit strength (flow time of the start).
    blurry_init
        Start from the noised blurry latents (False: from pure noise, the ablation).
    seed
        Noise seed (a clip's noise depends on the seed and its TR, so renders are repeatable).
    """

    def __init__(
        self,
        denoiser: VideoDenoiser,
        autoencoder,
        text_encoder,
        steps: int = 2,
        strength: float = 0.7,
        blurry_init: bool = True,
        seed: int = 0,
        continuation: float = 0.5,
    ) -> None:
        self.model = denoiser.eval()
        self.ae = autoencoder
        self.text_encoder = text_encoder
        self.steps = steps
        self.strength = strength
        self.blurry_init = blurry_init
        self.seed = seed
        self.continuation = continuation
        self.frames_per_tr = denoiser.cfg.frames
        self.size = (autoencoder.config["frame_size"],) * 2
        self.tail: torch.Tensor | None = None

    @property
    def text_encoder(self):
        """Callable ``list[str] -> (N, D)`` caption embeddings; setting it empties the cache."""
        return self._text_encoder

    @text_encoder.setter
    def text_encoder(self, encoder) -> None:
        self._text_encoder = encoder
        self._captions: OrderedDict[str, torch.Tensor] = OrderedDict()

    def caption_embedding(self, caption: str) -> torch.Tensor:
        """(1, D) text embedding of a caption, from a small cache: a scene's TRs repeat captions."""
        emb = self._captions.pop(caption, None)
        if emb is None:
            emb = torch.as_tensor(np.asarray(self.text_encoder([caption]), np.float32))
        self._captions[caption] = emb
        while len(self._captions) > 64:
            self._captions.popitem(last=False)
        return emb

    def inputs(self, cond: Conditions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Start latents, condition channels and tokens of one TR's conditions (batch of 1).

        A missing condition (None, or an empty caption) enters as zeros — what the teacher saw
        under its condition drop-out — so bundles without a head, and ablations, still render.
        """
        c = self.model.cfg
        if cond.blurry is None:
            raise ValueError(f"TR {cond.tr}: the diffusion renderer needs decoded blurry latents")
        blurry = torch.as_tensor(np.asarray(cond.blurry, np.float32)).unsqueeze(0)
        lat = blurry.shape[2:]

        def t(a, shape):
            return torch.zeros(1, *shape) if a is None else torch.as_tensor(np.asarray(a, np.float32))[None]

        if cond.caption:
            text = self.caption_embedding(cond.caption)
        else:
            text = torch.zeros(1, c.embed_dim)
        channels, tok = condition_inputs(
            blurry,
            t(cond.mask, (c.mask_frames, *lat[1:])),
            t(cond.keyframe, lat),
            t(cond.semantic, (c.embed_dim,)),
            text,
            t(cond.concepts, (c.n_concepts,)),
            self.frames_per_tr,
        )
        tokens = self.model.tokens(**tok)
        g = torch.Generator().manual_seed(self.seed * 100_003 + cond.tr)
        noise = torch.randn(blurry.shape, generator=g)
        if self.blurry_init:
            x = (1 - self.strength) * blurry + self.strength * noise
        else:
            x = noise
        return x, channels, tokens

    def continue_from(self, tail: torch.Tensor | None) -> None:
        """Seed the next clip's first frames from this latent (a same-scene boundary), or not."""
        self.tail = tail

    @torch.no_grad()
    def render_latents(self, cond: Conditions) -> torch.Tensor:
        """(F, C, h, w) latents of the clip."""
        x, channels, tokens = self.inputs(cond)
        strength = self.strength if self.blurry_init else 1.0
        if self.tail is not None:
            # Pull the start of the clip towards the previous clip's end, fading over the clip.
            w = self.continuation * torch.linspace(1, 0, x.shape[1]).view(1, -1, 1, 1, 1)
            start = (1 - strength) * self.tail.view(1, 1, *self.tail.shape) + strength * x
            x = (1 - w) * x + w * start
        return sample_flow(self.model, x, channels, tokens, self.steps, strength)[0]

    def render(self, conditions: Conditions) -> np.ndarray:
        from rtdecode.models.autoencoder import to_uint8

        latents = self.render_latents(conditions)
        self.last_latents = latents
        with torch.no_grad():
            return to_uint8(self.ae.decode(latents))


def renderer_autoencoder(tensors: dict[str, np.ndarray], spec: dict, ae):
    """The autoencoder a renderer decodes its latents with.

    ``ae`` itself, or — when the renderer ships a light frame decoder (``spec["frame_decoder"]``,
    ``frame_decoder.*`` tensors; ``rtdecode train frame-decoder``) — ``ae``'s encoder and latent
    space with that decoder.
    """
    from rtdecode.models import load_module
    from rtdecode.models.autoencoder import DECODER_PARTS, with_decoder

    fd = spec.get("frame_decoder")
    if not fd:
        return ae
    light = with_decoder(ae, fd["config"])
    for part in DECODER_PARTS:
        sub = light.get_submodule(part.rstrip("."))
        load_module(sub, tensors, f"frame_decoder.{part}")
    return light.eval()


def diffusion_renderer(
    tensors: dict[str, np.ndarray],
    spec: dict,
    encoders: dict,
    which: str = "student",
    steps: int | None = None,
    **kwargs,
) -> DiffusionRenderer:
    """A :class:`DiffusionRenderer` from a bundle's tensors and its manifest's ``renderer`` entry.

    Parameters
    ----------
    tensors
        The bundle's tensors (``teacher.*``/``student.*`` denoiser weights).
    spec
        ``renderer.json`` as written by ``rtdecode train renderer`` (config, strength, steps).
    encoders
        ``{"ae": autoencoder, "clip": world-CLIP}`` (decoding latents — with the renderer's own
        frame decoder when it ships one, :func:`renderer_autoencoder` — and embedding captions).
    which
        ``student`` (few steps) or ``teacher``.
    steps
        Sampler steps; default the spec's ``student_steps`` / ``teacher_steps``.
    """
    from rtdecode.models import load_module

    if which not in ("student", "teacher"):
        raise ValueError(f"which must be student or teacher, got {which!r}")
    model = VideoDenoiser.from_config(spec["config"])
    load_module(model, tensors, f"{which}.")
    n = steps or int(spec[f"{which}_steps"])
    return DiffusionRenderer(
        model.float(),
        renderer_autoencoder(tensors, spec, encoders["ae"]),
        CaptionEncoder(encoders["clip"].eval()),
        n,
        float(spec["strength"]),
        **kwargs,
    )
