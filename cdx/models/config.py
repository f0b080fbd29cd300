"""Typed model configuration and named presets.

A model is a list of modalities (each: a condition encoder, a collaborator UNet and a dynamic
diffuser) sharing one KL autoencoder and one noise schedule. Collaboration is data: any number
of modalities, in a fixed order.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .autoencoder import AutoencoderConfig
from .text_encoder import TextEncoderConfig
from .unet import UNetConfig

MASK_CLASSES = 19
MASK_TOKENS = 1024  # 32 x 32 label map, flattened


@dataclass(frozen=True)
class ModalityConfig:
    name: str  # "mask" or "text" (or any name a researcher gives a new modality)
    kind: str  # "mask" or "text": how its condition is encoded
    unet: UNetConfig
    diffuser: UNetConfig
    text: TextEncoderConfig | None = None  # for kind == "text"
    context_dim: int = 32
    # Official influence shaping: the decay k(t) applied to this modality's weight and its scale.
    decay: str = "none"  # "cosine" or "none"
    influence_scale: float = 1.0
    # Classifier-free guidance scale of this collaborator (cdx.models.guidance): 1 = none, the official
    # presets' setting; above 1 only for a collaborator trained with condition dropout.
    guidance: float = 1.0
    # The words of the captions the collaborator was trained on (kind text), sorted; None: not recorded (the
    # official checkpoints). A caption word outside it is warned about (cdx.models.modalities).
    vocabulary: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ModelConfig:
    preset: str
    modalities: tuple[ModalityConfig, ...]
    autoencoder: AutoencoderConfig
    latent_channels: int = 3
    latent_size: tuple[int, int] = (16, 16)
    scale_factor: float = 1.0
    timesteps: int = 1000
    linear_start: float = 0.0015
    linear_end: float = 0.0195
    shaping: bool = True  # official shaping on by default for the official presets
    # The DDIM eta `cdx run`/`eval`/`edit` use unless told otherwise: 0 (deterministic, the official
    # models' setting); a bundle may ask for more noise when its high-noise predictions are imprecise.
    eta: float = 0.0
    # FreeU (b1, b2, s1, s2) on the collaborators' decoders (cdx.models.freeu); None: off, as trained.
    freeu: tuple[float, float, float, float] | None = None
    # Feature caching (cdx.models.deepcache): the skip branch of the collaborators' cached/shallow networks
    # ({m}_unet_full, {m}_unet_shallow) that runners and exports of this config hold; None: none.
    feature_cache: int | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        f = self.autoencoder.downsample_factor
        return (self.latent_size[0] * f, self.latent_size[1] * f)

    def modality(self, name: str) -> ModalityConfig:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def receiver(self) -> int:
        """The modality that takes the weight the decayed modalities give up (the last undecayed one)."""
        idx = [i for i, m in enumerate(self.modalities) if m.decay == "none"]
        return idx[-1] if idx else len(self.modalities) - 1

    def with_guidance(self, scales: dict[str, float]) -> "ModelConfig":
        """This config with the guidance scales of the named modalities replaced."""
        unknown = sorted(set(scales) - {m.name for m in self.modalities})
        if unknown:
            raise KeyError(f"no modality named {', '.join(unknown)}")
        mods = tuple(dataclasses.replace(m, guidance=float(scales[m.name])) if m.name in scales else m
                     for m in self.modalities)
        return dataclasses.replace(self, modalities=mods)

    def alphas_cumprod(self):
        """The training schedule's cumulative alphas (T,) float64: the one place the betas are made."""
        from .schedule import alphas_cumprod, linear_betas

        return alphas_cumprod(linear_betas(self.timesteps, self.linear_start, self.linear_end))

    def step_table(self, steps: int, sampler: str = "ddim", eta: float | None = None):
        """The per-step coefficient table of a request (eta None: the model's own)."""
        from .schedule import make_table, resolve_eta

        return make_table(self.alphas_cumprod(), steps, sampler, resolve_eta(self.eta, eta))

    def with_freeu(self, factors) -> "ModelConfig":
        """This config with FreeU's (b1, b2, s1, s2) set (None: as it is; () or False: off)."""
        if factors is None:
            return self
        return dataclasses.replace(self, freeu=tuple(float(v) for v in factors) if factors else None)

    def with_shaping(self, on: bool | None) -> "ModelConfig":
        """This config with the official influence shaping switched on or off (None: as it is)."""
        return self if on is None else dataclasses.replace(self, shaping=bool(on))

    def with_feature_cache(self, branch: int | None) -> "ModelConfig":
        """This config with the feature-cache networks at `branch` (None: without them)."""
        return dataclasses.replace(self, feature_cache=None if branch is None else int(branch))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["feature_cache"] is None:  # absent, as before the field existed: bundle and export keys unchanged
            del d["feature_cache"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        mods = []
        for m in d["modalities"]:
            mods.append(ModalityConfig(
                name=m["name"], kind=m["kind"],
                unet=UNetConfig.from_dict(m["unet"]), diffuser=UNetConfig.from_dict(m["diffuser"]),
                text=TextEncoderConfig.from_dict(m["text"]) if m.get("text") else None,
                context_dim=m["context_dim"], decay=m.get("decay", "none"),
                influence_scale=float(m.get("influence_scale", 1.0)), guidance=float(m.get("guidance", 1.0)),
                vocabulary=None if m.get("vocabulary") is None else tuple(m["vocabulary"]),
            ))
        # "guidance_scale": a model-wide field of earlier bundles that nothing read (always 1)
        rest = {k: v for k, v in d.items() if k not in ("modalities", "autoencoder", "guidance_scale")}
        rest["latent_size"] = tuple(rest["latent_size"])
        if rest.get("freeu") is not None:
            rest["freeu"] = tuple(float(v) for v in rest["freeu"])
        return cls(modalities=tuple(mods), autoencoder=AutoencoderConfig.from_dict(d["autoencoder"]), **rest)


def _official(preset: str, vae_mult: tuple[int, ...], resolution: int, scale_factor: float) -> ModelConfig:
    ctx = 640
    unet = UNetConfig(in_channels=3, out_channels=3, model_channels=192, channel_mult=(1, 2, 3, 5),
                      num_res_blocks=2, attention_resolutions=(8, 4, 2), num_heads=32, context_dim=ctx)
    diffuser = dataclasses.replace(unet, out_channels=1, model_channels=32)
    text = TextEncoderConfig(n_embed=ctx, n_layer=32, vocab_size=30522, max_seq_len=77)
    return ModelConfig(
        preset=preset,
        modalities=(
            ModalityConfig("mask", "mask", unet, diffuser, context_dim=ctx, decay="cosine", influence_scale=2.0),
            ModalityConfig("text", "text", unet, diffuser, text=text, context_dim=ctx),
        ),
        autoencoder=AutoencoderConfig(embed_dim=3, z_channels=3, ch=128, ch_mult=vae_mult, num_res_blocks=2,
                                      resolution=resolution),
        latent_channels=3, latent_size=(64, 64), scale_factor=scale_factor, shaping=True,
    )


def _cpu_sized(name: str, unet_mult: tuple[int, ...], unet_channels: int, unet_attn: tuple[int, ...],
               text_dim_head: int, vae_mult: tuple[int, ...], shaping: bool = False) -> ModelConfig:
    """Small members of the official family for CPU work: 64x64 faces, f4 latent 3x16x16, context 64."""
    ctx = 64
    unet = UNetConfig(in_channels=3, out_channels=3, model_channels=unet_channels, channel_mult=unet_mult,
                      num_res_blocks=1, attention_resolutions=unet_attn, num_heads=4, context_dim=ctx)
    diffuser = UNetConfig(in_channels=3, out_channels=1, model_channels=32, channel_mult=(1, 2),
                          num_res_blocks=1, attention_resolutions=(2,), num_heads=4, context_dim=ctx)
    text = TextEncoderConfig(n_embed=ctx, n_layer=2, vocab_size=30522, max_seq_len=77, heads=4,
                             dim_head=text_dim_head)
    return ModelConfig(
        preset=name,
        modalities=(
            ModalityConfig("mask", "mask", unet, diffuser, context_dim=ctx),
            ModalityConfig("text", "text", unet, diffuser, text=text, context_dim=ctx),
        ),
        autoencoder=AutoencoderConfig(embed_dim=3, z_channels=3, ch=32, ch_mult=vae_mult, num_res_blocks=1,
                                      resolution=64),
        latent_channels=3, latent_size=(16, 16), scale_factor=1.0, shaping=shaping,
    )


def tiny() -> ModelConfig:
    """A small configuration of the same family, for CPU work and tests."""
    return _cpu_sized("tiny", (1, 2, 2), 64, (2, 4), 16, (1, 2, 2))


def small() -> ModelConfig:
    """The architecture of the shipped default model, about 13 M parameters."""
    return _cpu_sized("small", (1, 2, 4), 32, (2, 4), 16, (1, 2, 2))


PRESETS = {
    "official-256": lambda: _official("official-256", (1, 2, 4), 256, 0.058),
    "official-512": lambda: _official("official-512", (1, 2, 4, 4), 512, 0.141),
    "small": small,
    "tiny": tiny,
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def from_official_configs(configs: dict, preset_name: str = "official-custom",
                          latent_size: tuple[int, int] | None = None) -> ModelConfig:
    """Build a ModelConfig from the official YAML configs (as dicts: compose, text_ldm, mask_ldm)."""
    comp = configs["compose"]["params"]
    text_p = configs["text_ldm"]["model"]["params"]
    mask_p = configs["mask_ldm"]["model"]["params"]
    conf = comp["compose_unet_config"]["params"]["confidence_map_predictor_config"]["params"]
    ae = text_p["first_stage_config"]["params"]
    bert = text_p["cond_stage_config"]["params"]
    seg = mask_p["cond_stage_config"]["params"]
    text_cfg = TextEncoderConfig(n_embed=bert["n_embed"], n_layer=bert["n_layer"],
                                 vocab_size=bert.get("vocab_size", 30522), max_seq_len=bert.get("max_seq_len", 77))
    size = comp["image_size"]
    return ModelConfig(
        preset=preset_name,
        modalities=(
            ModalityConfig("mask", "mask", UNetConfig.from_dict(mask_p["unet_config"]["params"]),
                           UNetConfig.from_dict(conf), context_dim=seg["context_dim"], decay="cosine",
                           influence_scale=2.0),
            ModalityConfig("text", "text", UNetConfig.from_dict(text_p["unet_config"]["params"]),
                           UNetConfig.from_dict(conf), text=text_cfg, context_dim=bert["n_embed"]),
        ),
        autoencoder=AutoencoderConfig.from_dict({**ae["ddconfig"], "embed_dim": ae["embed_dim"]}),
        latent_channels=comp["channels"],
        latent_size=tuple(latent_size or (size if isinstance(size, (list, tuple)) else (size, size))),
        scale_factor=comp["scale_factor"], timesteps=comp["timesteps"],
        linear_start=comp["linear_start"], linear_end=comp["linear_end"], shaping=True,
    )

