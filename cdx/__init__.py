"""cdx: a fast inference engine for Collaborative Diffusion.

    import cdx
    pipe = cdx.Pipeline.load()
    out = pipe(text="This woman has blond hair.", mask="examples/mask_long_hair.png", seed=0, steps=50)
    out.images[0].save("face.png")
"""
from .errors import CdxError, InputError, StaleArtifactError

__version__ = "0.1.0"
__all__ = ["CdxError", "InputError", "Output", "Pipeline", "StaleArtifactError", "__version__", "render"]


def __getattr__(name: str):
    if name in ("Pipeline", "Output"):  # imported on first use: `import cdx` stays light (no torch)
        from . import api

        return getattr(api, name)
    if name == "render":  # the labelled grids (influence, intermediates) the README names as cdx.render
        import importlib

        return importlib.import_module(".render", __name__)
    raise AttributeError(f"module 'cdx' has no attribute {name!r}")
