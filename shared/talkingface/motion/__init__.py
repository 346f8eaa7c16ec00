"""The motion stage: audio features + pitch -> lm3d (GeneFace++ §4.1; docs/motion.md).

`talkingface.motion.infer.MotionModel` generates, `talkingface.motion.train` trains the sync
expert, the pitch-aware VAE and per-avatar postnets, `talkingface.motion.evaluate` measures
them against baselines, and `talkingface.motion.servicer` serves them over gRPC.
"""
