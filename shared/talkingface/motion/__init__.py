"""The motion stage: audio features + pitch -> lm3d (GeneFace++ §4.1; docs/motion.md).

`talkingface.motion.infer.MotionModel` generates; `talkingface.motion.train` trains the sync
expert and the pitch-aware VAE, `talkingface.motion.adapt` a per-avatar postnet;
`talkingface.motion.evaluate` measures them against baselines, and
`talkingface.motion.servicer` serves them over gRPC.
"""
