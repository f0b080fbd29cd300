"""cdx: a fast inference engine for Collaborative Diffusion."""
__version__ = "0.1.0"
