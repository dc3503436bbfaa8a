"""Development tools of musicgen-cog, not used at run time: random-weight checkpoints for tests and
benchmarks (``checkpoints``), the Cog OpenAPI schema written from predict.py (``cog_schema``) and Cog's server
started as ``make serve`` starts it (``serve``)."""
