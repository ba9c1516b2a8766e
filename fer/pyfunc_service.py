"""Entry file of the logged photo-capable pyfunc model (MLflow "models from code"): see `fer.photo_service`."""

import mlflow

from fer.photo_service import FaceEmotionModel

mlflow.models.set_model(FaceEmotionModel())
