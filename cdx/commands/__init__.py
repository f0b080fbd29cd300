"""One module per `cdx` command; each adds itself to `cdx.cli.main`."""
