"""Run config: YAML file, flag overrides, validation messages naming the field, and the published schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flops.config import RunConfig, config_json_schema, load_config
from flops.errors import ConfigError

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "digits-cnn" / "flops.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flops.yaml"
    path.write_text(text)
    return path


def test_no_file_and_no_flags_gives_the_defaults() -> None:
    assert load_config(None, {}) == RunConfig()


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE_CONFIG, {})
    assert (config.rounds, config.learners, config.training.local_epochs) == (3, 3, 2)


def test_flags_override_the_file_and_none_flags_do_not(tmp_path: Path) -> None:
    path = _write(tmp_path, "rounds: 5\nlearners: 4\ntraining:\n  batch_size: 16\n  learning_rate: 0.1\n")
    config = load_config(path, {"rounds": 2, "learners": None, "training.batch_size": 64, "training.local_epochs": 3})
    assert config.rounds == 2  # flag wins
    assert config.learners == 4  # flag not given: file wins
    assert config.training.batch_size == 64  # nested flag wins
    assert config.training.learning_rate == 0.1  # nested value the flags did not touch
    assert config.training.local_epochs == 3  # flag for a section the file does not mention


def test_flags_alone_create_nested_sections() -> None:
    config = load_config(None, {"training.learning_rate": 0.5, "round_timeout_s": 30.0})
    assert config.training.learning_rate == 0.5 and config.round_timeout_s == 30.0


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("roundz: 3\n", "'roundz'"),
        ("training:\n  epochs: 2\n", "'training.epochs'"),
        ("rounds: -1\n", "'rounds'"),
        ("learners: 0\n", "'learners'"),
        ("strategy:\n  fraction_train: 1.5\n", "'strategy.fraction_train'"),
    ],
)
def test_invalid_field_is_named_with_the_file(tmp_path: Path, text: str, field: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    message = str(info.value)
    assert message.startswith(f"{path}: field {field}"), message
    assert "\n" not in message


def test_invalid_flag_is_named_as_a_flag() -> None:
    with pytest.raises(ConfigError, match=r"^flags: field 'rounds'"):
        load_config(None, {"rounds": 0})


def test_node_minimum_above_learners_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "learners: 2\nstrategy:\n  min_train_nodes: 3\n")
    with pytest.raises(ConfigError, match=r"min_train_nodes = 3 exceeds learners = 2"):
        load_config(path, {})


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "rounds: 2\nlearners: 3\ntraining: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"^{path}:\d+: invalid YAML"):
        load_config(path, {})


def test_non_mapping_top_level_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(_write(tmp_path, "- rounds\n- 3\n"), {})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml", {})


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, ""), {}) == RunConfig()


def test_min_nodes_default_to_the_quorum_so_a_lost_learner_does_not_stall_rounds() -> None:
    config = load_config(None, {"learners": 5, "strategy.min_evaluate_nodes": 2})
    assert config.quorum() == 3 and config.min_nodes("min_train_nodes") == 3
    assert config.min_nodes("min_evaluate_nodes") == 2
    strict = load_config(None, {"learners": 5, "strategy.min_fit_fraction": 1.0})
    assert strict.min_nodes("min_available_nodes") == 5
    assert load_config(None, {"learners": 1, "strategy.min_fit_fraction": 0.1}).quorum() == 1


def test_strategy_by_name_with_its_own_parameters(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "strategy:\n  name: trimmed-mean\n  params: {beta: 0.2}\nmax_failed_rounds: 3\n"), {})
    assert (config.strategy.name, config.strategy.params, config.max_failed_rounds) == ("trimmed-mean", {"beta": 0.2}, 3)
    path = _write(tmp_path, "strategy:\n  name: krum\n  params: {beta: 0.2}\n")
    with pytest.raises(ConfigError, match=r"field 'strategy'.*strategy.params.beta: not a parameter of krum \(known: num_malicious_nodes\)"):
        load_config(path, {})
    with pytest.raises(ConfigError, match=r"field 'strategy.name'.*'fedavg', 'fedprox'"):
        load_config(_write(tmp_path, "strategy:\n  name: fedsgd\n"), {})


def test_krum_needs_2f_plus_3_updates_in_every_aggregation(tmp_path: Path) -> None:
    ok = load_config(_write(tmp_path, "learners: 5\nstrategy: {name: krum, params: {num_malicious_nodes: 1}}\n"), {})
    assert ok.strategy.params == {"num_malicious_nodes": 1}
    with pytest.raises(ConfigError, match=r"krum with num_malicious_nodes = 1 needs at least 5 .* learners: 4"):
        load_config(_write(tmp_path, "learners: 4\nstrategy: {name: krum, params: {num_malicious_nodes: 1}}\n"), {})
    with pytest.raises(ConfigError, match=r"needs at least 3 .*learners per cluster .*: 2"):
        load_config(_write(tmp_path, "learners: 6\nclusters: 3\nstrategy: {name: krum}\n"), {})
    with pytest.raises(ConfigError, match=r"num_malicious_nodes = 1.5: must be a whole number"):
        load_config(_write(tmp_path, "learners: 9\nstrategy: {name: krum, params: {num_malicious_nodes: 1.5}}\n"), {})


def test_schema_forbids_unknown_fields_and_describes_the_top_level() -> None:
    schema = json.loads(config_json_schema())
    assert schema["additionalProperties"] is False
    assert {"rounds", "learners", "training", "strategy"} <= set(schema["properties"])


@pytest.mark.parametrize(
    ("text", "field", "detail"),
    [
        ("training:\n  learning_rate: .inf\n", "training.learning_rate", "finite"),
        ("comm_budget: .nan\n", "comm_budget", "finite"),
        ("rounds: true\n", "rounds", "valid integer"),
        ("training:\n  batch_size: 2.0\n", "training.batch_size", "valid integer"),
        ("rounds: 99999999999999999999\n", "rounds", "less than or equal to 100000"),
    ],
)
def test_non_finite_numbers_booleans_and_huge_counts_are_refused(tmp_path: Path, text: str, field: str,
                                                                 detail: str) -> None:
    path = tmp_path / "flops.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{path}: field '{field}': .*{detail}"):
        load_config(path, {})


def test_flag_values_get_the_same_checks() -> None:
    with pytest.raises(ConfigError, match=r"^flags: field 'training.learning_rate': .*finite"):
        load_config(None, {"training.learning_rate": float("inf")})
    with pytest.raises(ConfigError, match=r"^flags: field 'rounds': .*less than or equal"):
        load_config(None, {"rounds": 99999999999999999999})


def test_an_integer_learning_rate_is_still_a_number() -> None:
    assert load_config(None, {"training.learning_rate": 1}).training.learning_rate == 1.0


def test_a_binary_or_unreadable_file_is_one_config_error(tmp_path: Path) -> None:
    binary = tmp_path / "flops.yaml"
    binary.write_bytes(b"rounds: 2\n\xff\xfe\x00")
    with pytest.raises(ConfigError, match=rf"^{binary}: not a UTF-8 text file \(byte 10\)"):
        load_config(binary, {})
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: cannot read the config file"):
        load_config(tmp_path, {})


def test_hierarchy_options_given_lists_only_what_the_user_set(tmp_path: Path) -> None:
    assert load_config(None, {}).hierarchy_options_given() == []
    assert load_config(None, {"local_rounds": 2, "assignment": None}).hierarchy_options_given() == ["local_rounds"]
    path = tmp_path / "flops.yaml"
    path.write_text("assignment: balanced\n")
    assert load_config(path, {}).hierarchy_options_given() == ["assignment"]
