"""The rendering stage: motion (lm3d) to video frames (GeneFace++ §4.3, instant motion-to-video)."""
