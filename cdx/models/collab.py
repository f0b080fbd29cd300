"""The collaborative model: per modality a condition encoder, a collaborator UNet and a dynamic
diffuser, plus the shared KL autoencoder. Networks are addressed by the names the bundle, the
export and every runner use."""
from __future__ import annotations

from torch import nn

from .autoencoder import Autoencoder
from .config import ModelConfig
from .modalities import kind_of
from .unet import UNet


def encoder_for(m) -> nn.Module:
    """The condition encoder of modality `m`, as its kind (cdx.models.modalities) builds it."""
    return kind_of(m.kind).encoder(m)


class CollaborativeModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoders = nn.ModuleDict({m.name: encoder_for(m) for m in cfg.modalities})
        self.unets = nn.ModuleDict({m.name: UNet(m.unet) for m in cfg.modalities})
        self.diffusers = nn.ModuleDict({m.name: UNet(m.diffuser) for m in cfg.modalities})
        self.vae = Autoencoder(cfg.autoencoder)

    def networks(self) -> dict[str, nn.Module]:
        """Every stored network by its bundle name: {m}_encoder, {m}_unet, {m}_diffuser, vae."""
        nets = {}
        for m in self.cfg.modalities:
            nets[f"{m.name}_encoder"] = self.encoders[m.name]
            nets[f"{m.name}_unet"] = self.unets[m.name]
            nets[f"{m.name}_diffuser"] = self.diffusers[m.name]
        nets["vae"] = self.vae
        return nets

    def module(self, name: str) -> nn.Module:
        """The nn.Module behind an engine network name (see cdx.export.spec), positional inputs."""
        from .autoencoder import VaeDecoder, VaeEncoder

        if name == "vae_decoder":
            return VaeDecoder(self.vae, self.cfg.scale_factor)
        if name == "vae_encoder":
            return VaeEncoder(self.vae, self.cfg.scale_factor)
        if name.endswith(("_unet_full", "_unet_shallow")):  # feature caching (cdx.models.deepcache)
            from .deepcache import CachingUNet, ShallowUNet

            base, _, call = name.rpartition("_")
            if self.cfg.feature_cache is None:
                raise KeyError(f"no network named {name!r} (feature caching is off in this config)")
            wrap = CachingUNet if call == "full" else ShallowUNet
            return wrap(self.module(base), self.cfg.feature_cache)
        mod, _, part = name.rpartition("_")
        table = {"encoder": self.encoders, "unet": self.unets, "diffuser": self.diffusers}.get(part)
        if table is None or mod not in table:
            raise KeyError(f"no network named {name!r}")
        if part == "unet":
            self._sync_freeu()
        if part == "unet" and self.cfg.modality(mod).guidance != 1.0:
            return self._guided(mod)
        return table[mod]

    def _sync_freeu(self) -> None:
        """Put FreeU's hooks on the collaborators as the config says (cdx.models.freeu), once per setting."""
        want = self.cfg.freeu
        if self.__dict__.get("_freeu_on") == (want, [id(u) for u in self.unets.values()]):
            return
        from .freeu import apply_freeu, remove_freeu

        if want is None:
            remove_freeu(self)
        else:
            apply_freeu(self, *want)
        self.__dict__["_freeu_on"] = (want, [id(u) for u in self.unets.values()])

    def _guided(self, name: str) -> nn.Module:
        """The collaborator with classifier-free guidance (cdx.models.guidance), made once per UNet object,
        device and scale (an edit's fine-tuned copy or a move to the GPU gets a fresh one)."""
        from .guidance import guided

        m = self.cfg.modality(name)
        unet = self.unets[name]
        cache = self.__dict__.setdefault("_guided_cache", {})
        hit = cache.get(name)
        if hit is None or hit.unet is not unet or hit.scale != m.guidance or hit.null.device != \
                next(unet.parameters()).device:
            cache[name] = guided(unet, self.encoders[name], m, m.guidance)
        return cache[name]
