"""Evaluation (docs/evaluation.md): benchmarks in their released layouts, scoring protocols, resumable runs that
survive bad items, reports."""
