from pathlib import Path

import yaml

from probebench.params.schema import parse_params


def test_presets_are_valid_params():
    for path in Path("presets").glob("*.yaml"):
        p = parse_params(yaml.safe_load(path.read_text()), source=str(path))
        assert p.crosscoders and all(cc.top_k == 80 for cc in p.crosscoders.values())
