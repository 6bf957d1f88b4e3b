"""DVC stage prompts@<task>: write the prompt set and its test-set hash."""

from __future__ import annotations

from pathlib import Path

from _common import console, run

from probebench.artifacts.io import write_json, write_parquet
from probebench.params.schema import Params, ParamsError
from probebench.prompts import build_synthetic, near_duplicate_share, read_user_prompts, test_set_hash, train_hash


def main(params: Params, argv: list[str]) -> None:
    (name,) = argv
    if name not in params.tasks:
        raise ParamsError(f"params.yaml: tasks has no key {name!r}; known: {sorted(params.tasks)}")
    task = params.tasks[name]
    if task.kind is not None:
        df = build_synthetic(params.synthetic_spec(name))
    else:
        df = read_user_prompts(Path(task.file), name=name, split_salt=params.split.salt,
                               test_fraction=params.split.test_fraction)
    info = {"task": name, "n_train": int((df.split == "train").sum()), "n_test": int((df.split == "test").sum()),
            "test_set_hash": test_set_hash(df), "train_hash": train_hash(df),
            "positive_rate_test": round(float(df.loc[df.split == "test", "label"].mean()), 4),
            "near_duplicate_share": round(near_duplicate_share(df), 4)}
    write_parquet(Path("data/prompts") / f"{name}.parquet", df)
    write_json(Path("data/prompts") / f"{name}.json", info)
    console.print(f"prompts@{name}: {info['n_train']} train / {info['n_test']} test, hash {info['test_set_hash'][:12]}, "
                  f"{info['near_duplicate_share']:.0%} of test prompts within one word of a train prompt")


if __name__ == "__main__":
    run(main)
