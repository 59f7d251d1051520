"""Evaluation of the whole funnel: prequential replay, baselines, off-policy estimates."""
