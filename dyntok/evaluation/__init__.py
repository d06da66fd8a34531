"""Evaluation: GLUE and SQuAD metrics, the one timing path, Pareto frontier helpers, the results format
and plots."""
