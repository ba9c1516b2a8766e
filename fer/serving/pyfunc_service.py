"""Entry file of the logged photo-capable pyfunc model (MLflow "models from code"): see `fer.serving.photo_service`."""

import mlflow

from fer.serving.photo_service import FaceEmotionModel

mlflow.models.set_model(FaceEmotionModel())
