import pytest
import yaml

from probebench.params.schema import ParamsError, load_params, parse_params


def base(**over):
    raw = yaml.safe_load(open("params.yaml"))
    raw.update(over)
    return raw


def test_project_params_are_valid():
    p = load_params("params.yaml")
    assert len(p.models) >= 6 and p.zoo_spec("gemma2-it").family == "gemma2"
    assert p.zoo_spec("gemma2-it").d_model == p.zoo_spec("gemma2-base").d_model


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r["zoo"]["models"]["llama-s"].update(famly="llama"), r"zoo.models.llama-s.famly: unknown key"),
    (lambda r: r["zoo"]["models"]["llama-s"].update(family="mamba"), r"zoo.models.llama-s.family: unknown architecture family 'mamba'"),
    (lambda r: r["zoo"]["models"]["llama-s"].update(steps="many"), r"zoo.models.llama-s.steps"),
    (lambda r: r["models"].update({"gemma-2.2b": {"path": "x"}}), r"models key 'gemma-2.2b' must be a slug of letters, digits, '_' and '-'"),
    (lambda r: r["tasks"]["sentiment"].update(file="x.jsonl"), r"tasks.sentiment: give exactly one of kind"),
    (lambda r: r.update(bootstrapp={}), r"bootstrapp: unknown key"),
    (lambda r: r["ablate"].update(mode="zero") if "ablate" in r else r.update(ablate={"mode": "zero"}), r"ablate.mode"),
    (lambda r: r["zoo"]["finetunes"]["gemma2-it"].update(base="nope"), r"base 'nope' is not a zoo model"),
])
def test_bad_params_name_the_key(mutate, match):
    raw = base()
    mutate(raw)
    with pytest.raises(ParamsError, match=match):
        parse_params(raw)


def test_malformed_yaml_names_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("tasks: [unclosed\n")
    with pytest.raises(ParamsError, match=r"params.yaml: malformed YAML"):
        load_params(bad)


def test_unknown_model_key():
    with pytest.raises(ParamsError, match="unknown model key 'nope'"):
        load_params("params.yaml").model("nope")
