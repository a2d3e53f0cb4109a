__version__ = "0.1.0"
# The semantic-conventions schema of every visiontel.torch scope (tracer, meter and the
# finished spans built without a tracer): one value, so the scopes always match.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"
