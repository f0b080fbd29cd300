"""`cdx serve`: cdx behind HTTP on Ray Serve (needs the `serve` extra: pip install -e ".[serve]").

    HTTP -> Ingress (FastAPI: limits, validation, the page at /) -> Model (N replicas, @serve.batch)

`cdx.serve.app.build_app(ServeOptions(...))` is the application; `cdx.serve.local.serve_forever` runs it
on a local Ray instance or a cluster until interrupted. Ray is imported only by those modules, so
`cdx.serve.options` and `cdx.serve.batching` load without it.
"""
