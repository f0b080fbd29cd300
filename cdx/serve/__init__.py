"""`cdx serve`: cdx behind HTTP on Ray Serve (needs the `serve` extra: pip install -e ".[serve]").

    HTTP -> Ingress (FastAPI: limits, validation, the page at /) -> Model (N replicas, @serve.batch)

`cdx.serve.app.build_app(ServeOptions(...))` is the application; `cdx.serve.lifecycle.serve_forever` runs it
on a local Ray instance or a cluster until SIGINT or SIGTERM, and drains it (`cdx.serve.local.start` / `stop`
without the signals). Ray is imported only by those modules and the deployments', so `cdx.serve.options`,
`batching`, `schema`, `preflight`, `logs` and `drain` load without it.
"""
