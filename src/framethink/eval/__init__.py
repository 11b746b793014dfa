"""Evaluation (SPEC 7): benchmark loaders, deterministic scoring, resumable runs, reports."""
