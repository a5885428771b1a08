"""gonka-serve: launch and supervise vLLM from named model profiles, with a health sidecar.

Install with the ``serve`` extra (``pip install gonka-mux[serve]``). The pieces, each usable alone:

- :mod:`~gonka_mux.serving.registry`: profiles (model, parallelism, parsers, hardware) from TOML.
- :mod:`~gonka_mux.serving.gpu`: NVML inventory and the hardware-fit decision.
- :mod:`~gonka_mux.serving.command`: the vLLM command line for a profile.
- :mod:`~gonka_mux.serving.raywait`: the bounded waits that order a multi-node Ray launch.
- :mod:`~gonka_mux.serving.supervisor`: readiness, liveness, restart with backoff, graceful drain.
- :mod:`~gonka_mux.serving.metrics`: vLLM ``/metrics`` parsing (current and older metric names).
- :mod:`~gonka_mux.serving.health`: the health JSON and its HTTP sidecar.
- :mod:`~gonka_mux.serving.tiny_model`: an offline tiny checkpoint for CPU smoke tests.

Nothing is imported here: ``import gonka_mux.serving`` stays free.
"""
