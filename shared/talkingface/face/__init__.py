"""Faces in real video: MediaPipe's detection, 468-point mesh and person segmentation models
(Apache-2.0, run with LiteRT), the iBUG-68 subset of the mesh, and tracking.

`models` fetches and checks the model files (`make setup`); `detect.FaceDetector`,
`mesh.FaceMesh` and `ibug68.to_ibug68` are the building blocks of `talkingface avatar ingest`
(docs/ingest.md).
"""
