"""Evaluation: the paper's statistics, figures and tables."""
