"""Development tools of musicgen-cog, not used at run time: random-weight checkpoints for tests and
benchmarks (``checkpoints``) and the Cog OpenAPI schema written from predict.py (``cog_schema``)."""
