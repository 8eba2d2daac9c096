"""Benchmarks for emp-fastbuf and the libraries it is compared with.

``python -m bench.run`` runs every registered scenario with the per-call harness
(``bench.harness``) and writes ``bench/results/latest.{json,md}`` and a latency CDF plot.
Scenarios are registered in ``bench.scenarios``; the peers live in ``bench.peers``.
"""
