"""Benchmarking: DIR-Lab readers, external baselines and the ``deeplungreg benchmark`` runner.

* :mod:`.dirlab`: DIR-Lab 4D-CT and COPDgene raw images and landmarks.
* :mod:`.baselines`: ConvexAdam and elastix, converted to our field convention.
* :mod:`.worker`: one (pair, method) measurement in its own process.
* :mod:`.runner`: all of them, with results.csv, a Markdown table and box plots.
"""
