"""The fleet plane: the FastAPI service, its features, models and migrations."""
