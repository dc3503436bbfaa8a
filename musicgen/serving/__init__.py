"""Many requests on one model: the library's ``MusicGen`` (``service``), continuous batching (``scheduler``),
the GPU memory plan and per-request streams (``memory``, ``gpu_work``), batch jobs and Ray (``batch``,
``distributed``, ``store``), returned files (``retention``), metrics and Kubernetes probes (``metrics``,
``health``). Imports ``musicgen.engine`` and ``musicgen.audio`` below it."""
