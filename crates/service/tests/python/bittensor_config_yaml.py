"""Prints the YAML that bittensor 6.1.0's `bittensor.config` prints for a text-prompting v2.1.6
miner (its parser rebuilt from tests/fixtures/python-v2.1.6-flags.tsv), after parsing the
command line given as arguments. Regenerates the YAML fixtures of the service tests:

    python3 -m venv /tmp/bt61
    /tmp/bt61/bin/pip install --no-deps bittensor==6.1.0 munch==2.5.0 six==1.16.0 PyYAML==6.0.1
    /tmp/bt61/bin/python crates/service/tests/python/bittensor_config_yaml.py btlm ARGS... \
        > crates/service/tests/fixtures/bittensor-6.1-btlm-miner.yaml

Only bittensor/config.py is loaded (it needs PyYAML and munch, not torch), from the installed
package. The miner's derived keys (`full_path`, `miner.full_path`) are added as the v2.1.6
miner does before it logs its config.
"""

import argparse
import importlib.util
import os
import pathlib
import sys
import sysconfig

FIXTURE = pathlib.Path(__file__).parent.parent / "fixtures" / "python-v2.1.6-flags.tsv"


def load_bittensor_config():
    path = pathlib.Path(sysconfig.get_paths()["purelib"]) / "bittensor" / "config.py"
    spec = importlib.util.spec_from_file_location("bittensor_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.config


def typed(text):
    if text in ("-", "None"):
        return None
    if text == "[]":
        return []
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.replace("\\n", "\n")


def parser_for(miner):
    parser = argparse.ArgumentParser()
    for line in FIXTURE.read_text().splitlines():
        if line.startswith("#") or line.startswith("flag\t") or not line.strip():
            continue
        flag, kind, default, _example, miners, _here, source = line.split("\t")
        # Only what the miner's own parsers define: not the validator's flags, not the ones
        # issue 14 found elsewhere, not bittensor's subtensor._mock (see the fixture).
        if kind == "namespace" or "validator" in source or source.startswith("issue 14"):
            continue
        if flag in ("config", "strict", "no_version_checking", "no_prompt", "subtensor._mock"):
            continue  # bittensor.config adds the first four itself
        if miners not in ("all", miner):
            continue
        if kind == "switch":
            parser.add_argument("--" + flag, action="store_true", default=False)
        elif kind == "list":
            parser.add_argument("--" + flag, type=str, nargs="*", default=[])
        else:
            value = typed(default)
            kind_of = type(value) if value is not None else str
            parser.add_argument("--" + flag, type=kind_of, default=value)
    return parser


def main():
    miner, args = sys.argv[1], sys.argv[2:]
    config = load_bittensor_config()(parser_for(miner), args=args)
    config.full_path = os.path.expanduser(
        "{}/{}/{}/netuid{}/miner".format(
            config.logging.logging_dir,
            config.wallet.name,
            config.wallet.hotkey,
            config.netuid,
        )
    )
    config.miner.full_path = os.path.expanduser(
        "{}/{}/{}/{}".format(
            config.logging.logging_dir,
            config.wallet.name,
            config.wallet.hotkey,
            config.miner.name,
        )
    )
    # What `bt.logging.info(self.config)` shows, less its leading newline.
    print(str(config).lstrip("\n"), end="")


main()
