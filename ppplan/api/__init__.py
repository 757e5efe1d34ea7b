"""ppplan's edges: the ``ppplan`` CLI, the FastAPI service and the SQL store."""
