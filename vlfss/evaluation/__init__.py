"""Evaluation: ``harness.evaluate`` (also ``vlfss.evaluate``) scores zero-shot vs few-shot on the same episodes;
``runner.run_evaluation`` runs one described by name (``options.EvalJob``); ``metrics``, ``stats`` and
``calibration`` are the sums and scores; ``report`` writes tables and plots; ``bench`` measures speed.

Nothing is imported here, so that importing one part (e.g. the torch-free ``options`` for the CLI) stays cheap.
"""
