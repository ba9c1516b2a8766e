"""Entry file of the logged pyfunc model (MLflow "models from code"): see `fer.serving.pyfunc`."""

import mlflow

from fer.serving.pyfunc import EmotionModel

mlflow.models.set_model(EmotionModel())
