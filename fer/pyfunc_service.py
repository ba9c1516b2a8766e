"""Entry file of the logged photo-capable pyfunc model (MLflow "models from code"): see `fer.serving`."""

import mlflow

from fer.serving import FaceEmotionModel

mlflow.models.set_model(FaceEmotionModel())
