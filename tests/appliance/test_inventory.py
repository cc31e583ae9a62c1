"""The inventory's record and its labels (appliance/inventory.py): one rule for every label
anyone writes or reads — start --labels, the TOML file, command labels, ctl nodes add, the
auth service, and jumpgate ls filters."""
from __future__ import annotations

import pytest

from appliance.cli import remote
from appliance.cli.errors import CliError
from appliance.config import ConfigError, load_config
from appliance.inventory import (MAX_LABELS, LabelError, check_labels, format_labels, labels_match,
                                 parse_labels)
from appliance.node.labels import CommandLabel, LabelSet


@pytest.mark.parametrize("text, expected", [
    ("env=prod", {"env": "prod"}),
    ("env=prod,role=web", {"env": "prod", "role": "web"}),
    (" env=prod , role=web ,", {"env": "prod", "role": "web"}),
    ("team/db=core,k8s.io/app=x", {"team/db": "core", "k8s.io/app": "x"}),
    ("note=a=b", {"note": "a=b"}),
    ("empty=", {"empty": ""}),
    ("", {}),
])
def test_labels_are_comma_separated_key_value_pairs(text, expected):
    assert parse_labels(text) == expected


@pytest.mark.parametrize("text, why", [
    ("bad", "expected key=value"),
    ("=x", "expected key=value"),
    ("env=a,env=b", "given twice"),
    ("env=a,env=a", "given twice"),          # a repeated key is a typo even with the same value
    ("bad name=x", "invalid label name"),
    ("-env=x", "invalid label name"),
    ("a:b=x", "invalid label name"),         # what the auth service refuses, refused where it is typed
    ("env=" + "x" * 257, "at most 256"),
    ("env=tab\there", "printable"),
])
def test_malformed_duplicate_or_invalid_labels_are_refused(text, why):
    with pytest.raises(LabelError, match=why):
        parse_labels(text)


def test_at_most_32_labels():
    parse_labels(",".join(f"k{i}=v" for i in range(MAX_LABELS)))
    with pytest.raises(LabelError, match="at most"):
        parse_labels(",".join(f"k{i}=v" for i in range(MAX_LABELS + 1)))
    with pytest.raises(LabelError):
        check_labels({f"k{i}": "v" for i in range(MAX_LABELS + 1)})


def test_ls_takes_teleports_comma_syntax_and_separate_words_alike():
    """Issue 14 item 5: `jumpgate ls env=prod,role=web` matched nothing (one filter env="prod,role=web")."""
    assert remote.parse_labels(["env=prod,role=web"]) == remote.parse_labels(["env=prod", "role=web"]) \
        == {"env": "prod", "role": "web"}
    assert labels_match({"env": "prod", "role": "web", "team": "a"}, remote.parse_labels(["env=prod,role=web"]))
    with pytest.raises(CliError, match="given twice"):
        remote.parse_labels(["env=prod", "env=dev"])


def test_the_text_form_reads_back():
    labels = {"role": "web", "env": "prod"}
    assert format_labels(labels) == "env=prod,role=web" and parse_labels(format_labels(labels)) == labels


def test_start_and_the_toml_file_refuse_what_the_auth_service_would(tmp_path):
    with pytest.raises(ConfigError, match="--labels: label 'env' is given twice"):
        load_config(None, data_dir=str(tmp_path), labels="env=a,env=b")
    toml = tmp_path / "jumpgate.toml"
    toml.write_text('[node]\nlabels = {"a:b" = "x"}\n')
    with pytest.raises(ConfigError, match="line 2: node.labels: invalid label name 'a:b'"):
        load_config(str(toml))
    with pytest.raises(ValueError, match="invalid label name"):
        LabelSet({"a:b": "x"})               # a node does not start with labels its heartbeats carry in vain
    with pytest.raises(ValueError, match="at most 32"):
        LabelSet({f"k{i}": "v" for i in range(30)}, {f"c{i}": CommandLabel(["true"], 60) for i in range(3)})
