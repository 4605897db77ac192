"""The published JSON schema of the run config stays in step with the pydantic model."""

from pathlib import Path

from flops.config import config_json_schema

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "schema" / "config.schema.json"


def test_published_config_schema_matches_the_model() -> None:
    assert SCHEMA.read_text() == config_json_schema(), "regenerate with: flops schema > docs/schema/config.schema.json"
