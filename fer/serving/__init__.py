"""Serving: the logged pyfunc models, the engines they run on, and their clients.

- `pyfunc`: `EmotionModel` (faces in, probabilities out), logged by every training run;
- `photo_service`: `FaceEmotionModel` (faces or photos in, a row per face out), registered and served;
- `engines`: the Keras network, ONNX Runtime and LiteRT behind either, through `forward`;
- `faces`: face detection and cropping; `video`: faces followed across frames;
- `predict`: the `fer predict` client (photos and videos);
- `pyfunc_model.py`, `pyfunc_service.py`: the models' entry files (MLflow "models from code").

Example:
    import mlflow
    model = mlflow.pyfunc.load_model("runs:/<run_id>/model")
    probabilities = model.predict(faces)  # float32 N x 48 x 48 x 1, pixels 0-255 -> N x 8
"""

# Models logged before 0.2 import EmotionModel from `fer.serving` (then a module).
from fer.serving.pyfunc import EmotionModel, log_emotion_model

__all__ = ["EmotionModel", "log_emotion_model"]
