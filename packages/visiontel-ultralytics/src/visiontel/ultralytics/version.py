__version__ = "0.1.0"
# The semantic-conventions schema of the visiontel.ultralytics tracer and meter.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"
