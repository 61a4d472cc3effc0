"""The kopf operator for ModelService and TrainingJob."""
