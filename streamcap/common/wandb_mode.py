"""Which Weights & Biases mode a service runs in: nothing phones home without a key.

    resolve_wandb_mode("auto")   # 'online' with WANDB_API_KEY (or a netrc login), else 'offline'

An explicit setting wins; WANDB_MODE in the environment (e.g. `disabled` in tests) comes next.
"""

from __future__ import annotations

import os
from pathlib import Path

WANDB_MODES = ("auto", "online", "offline", "disabled")


def resolve_wandb_mode(configured: str) -> str:
    if configured != "auto":
        return configured
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") or _has_netrc_login() else "offline"


def _has_netrc_login() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False
