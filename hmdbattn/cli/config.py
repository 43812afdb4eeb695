"""`hmdbattn config`."""

from __future__ import annotations

from pathlib import Path

from hmdbattn.cli import app
from hmdbattn.cli.common import ConfigOption, JsonOption, SetOption
from hmdbattn.report import console, print_json


@app.command("config")
def config_(
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    json_out: bool = JsonOption,
) -> None:
    """Show every resolved config key: its value, where it came from and what it means.

    Sources, highest priority first: --set, the environment (HMDBATTN_SECTION__KEY), the
    --config file, the defaults. A bad config lists every problem and exits with code 2.
    """
    from hmdbattn.config import keys_json, keys_text, resolved_keys

    keys = resolved_keys(config, overrides or [])
    if json_out:
        print_json(keys_json(keys))
    else:
        print(keys_text(keys, console.width))
