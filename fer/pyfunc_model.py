"""Entry file of the logged pyfunc model (MLflow "models from code"): see `fer.serving`."""

import mlflow

from fer.serving import EmotionModel

mlflow.models.set_model(EmotionModel())
