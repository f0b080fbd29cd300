"""One input/output spec per network: names, symbolic dimensions and dtypes in one place.

ONNX export (input/output names, dynamic axes), the runners (named tensors in and out) and the
TensorRT optimisation profiles are all derived from these specs.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..models.config import ModelConfig
from ..models.modalities import kind_of

# A dimension is an int (fixed) or a str naming a symbolic axis. "batch" is the only dynamic axis.
Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: str  # "float32" or "int64"
    values: str = "normal"  # what random test inputs look like: "normal", "tokens", "onehot", "unit", "timestep"

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == "batch" else int(d) for d in self.shape)

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class NetworkSpec:
    name: str  # bundle/runner name, e.g. "text_unet", "vae_decoder"
    source: str  # bundle network it is built from
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    kind: str  # "encoder", "unet", "diffuser", "vae_decoder", "vae_encoder"
    modality: str | None = None

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: t.dynamic_axes for t in self.inputs + self.outputs if t.dynamic_axes}


def cache_dims(cfg: ModelConfig, m) -> tuple[int, int, int]:
    """(C, h, w) of modality m's feature cache at cfg.feature_cache (C doubled for a guided collaborator,
    whose cache holds its conditional and null halves)."""
    from ..models.deepcache import cache_shape

    c, h, w = cache_shape(m.unet, cfg.feature_cache, cfg.latent_size)
    return (2 * c if m.guidance != 1.0 else c), h, w


def network_specs(cfg: ModelConfig) -> dict[str, NetworkSpec]:
    """Every network of the engine for `cfg`, by name, in the order a run uses them."""
    c, (h, w) = cfg.latent_channels, cfg.latent_size
    hh, ww = cfg.image_size
    latent = ("batch", c, h, w)
    specs: dict[str, NetworkSpec] = {}
    for m in cfg.modalities:
        kind = kind_of(m.kind)
        ctx = TensorSpec("context", ("batch", kind.context_len(m), m.context_dim), "float32")
        ins = kind.encoder_input(m)
        enc_in = TensorSpec(ins.name, ("batch", *ins.shape), ins.dtype, ins.values)
        specs[f"{m.name}_encoder"] = NetworkSpec(f"{m.name}_encoder", f"{m.name}_encoder", (enc_in,), (ctx,),
                                                 "encoder", m.name)
        unet_in = (TensorSpec("x", latent, "float32"), TensorSpec("t", ("batch",), "int64", "timestep"), ctx)
        specs[f"{m.name}_unet"] = NetworkSpec(f"{m.name}_unet", f"{m.name}_unet", unet_in,
                                              (TensorSpec("eps", latent, "float32"),), "unet", m.name)
        specs[f"{m.name}_diffuser"] = NetworkSpec(
            f"{m.name}_diffuser", f"{m.name}_diffuser", unet_in,
            (TensorSpec("logits", ("batch", 1, h, w), "float32"),), "diffuser", m.name)
        if cfg.feature_cache is not None:  # the collaborator's cached and shallow calls (cdx.models.deepcache)
            eps = TensorSpec("eps", latent, "float32")
            cache = TensorSpec("cache", ("batch", *cache_dims(cfg, m)), "float32")
            specs[f"{m.name}_unet_full"] = NetworkSpec(f"{m.name}_unet_full", f"{m.name}_unet", unet_in,
                                                       (eps, cache), "unet", m.name)
            specs[f"{m.name}_unet_shallow"] = NetworkSpec(f"{m.name}_unet_shallow", f"{m.name}_unet",
                                                          (*unet_in, cache), (eps,), "unet", m.name)
    image = TensorSpec("image", ("batch", 3, hh, ww), "float32", "image")
    specs["vae_decoder"] = NetworkSpec("vae_decoder", "vae", (TensorSpec("latent", latent, "float32"),), (image,),
                                       "vae_decoder")
    specs["vae_encoder"] = NetworkSpec("vae_encoder", "vae", (image,), (TensorSpec("latent", latent, "float32"),),
                                       "vae_encoder")
    return specs
