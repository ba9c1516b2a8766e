# The project's image, for MLflow Projects on Kubernetes (kubernetes/MLproject runs its entry
# points in it) or for `docker run`. Build it from the repository root:
#   docker build -t registry.example.org/fer/fer-mlflow:latest .
# The project is pip-installed into the image's Python (pyproject.toml pins what conda.yaml pins).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    FER_CACHE_DIR=/var/cache/fer

# The working directory holds MLproject and experiments/, as a checkout does; the install is
# editable so that the package finds experiments/ beside it wherever a command runs.
WORKDIR /opt/fer
COPY pyproject.toml README.md MLproject conda.yaml ./
COPY experiments ./experiments
COPY fer ./fer
RUN pip install -e ".[sweep]" \
    && useradd --create-home --uid 1000 fer \
    && mkdir -p "$FER_CACHE_DIR" && chown fer "$FER_CACHE_DIR"
USER fer

# MLflow's Kubernetes backend replaces this with the entry point's command line
# (`python -m fer.cli train phase2 --data ... ` for -e phase2); on its own the image trains phase 2.
CMD ["python", "-m", "fer.cli", "train", "phase2"]
