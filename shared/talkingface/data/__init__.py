"""Datasets: SynthTalk (the built-in generator) and loaders shared by training code."""
