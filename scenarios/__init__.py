"""Labeled training scenarios shared by the tests and the benchmarks.

``gradscope_scenarios.handwritten`` is the suite written together with the detectors;
``gradscope_scenarios.generated`` draws scenarios from a space of configurations and labels
them with an oracle that does not import gradscope.
"""
