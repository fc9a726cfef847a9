"""Which W&B mode a run uses: ``--wandb``, else ``$WANDB_MODE``, else online with credentials and
offline without. Pure Python (no wandb, no torch): the configs declare their ``--wandb`` choices
from it and check them before anything starts.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from fw_agents.validation import check_choice

#: Accepted values of ``--wandb`` (``None`` / ``"auto"`` picks online or offline).
WANDB_MODES: tuple[str, ...] = ("online", "offline", "disabled")
#: The other values wandb itself takes in ``$WANDB_MODE`` (``wandb.Settings.mode``), as the mode they
#: amount to for one process: ``dryrun`` is its old name for offline, ``run`` for online, and ``shared``
#: is online with other processes writing to the same run.
WANDB_ENV_ALIASES: dict[str, str] = {"dryrun": "offline", "run": "online", "shared": "online"}
#: The W&B project when neither ``--wandb-project`` nor ``$WANDB_PROJECT`` names one.
DEFAULT_WANDB_PROJECT = "fw-agents"


def wandb_credentials_available() -> bool:
    """True when W&B credentials exist: ``WANDB_API_KEY`` or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    netrc_path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return netrc.netrc(netrc_path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str | None = None) -> str:
    """The W&B mode to use.

    :param mode: ``online``, ``offline``, ``disabled``, or ``None``/``"auto"``: then the
        ``WANDB_MODE`` environment variable if set, else ``online`` when credentials
        exist (see :func:`wandb_credentials_available`) and ``offline`` otherwise.
    :return: One of :data:`WANDB_MODES`.
    """
    if mode in (None, "auto"):
        env_mode = wandb_mode_from_environment()
        if env_mode is not None:
            return env_mode
        return "online" if wandb_credentials_available() else "offline"
    return check_choice("wandb mode", mode, WANDB_MODES)


def wandb_mode_from_environment() -> str | None:
    """``$WANDB_MODE`` as one of :data:`WANDB_MODES` (wandb's own other names mapped by
    :data:`WANDB_ENV_ALIASES`), or None when it is unset or empty.

    :raises ValueError: A value wandb does not take either: one line naming it and the accepted ones
        (a typo there would otherwise run without the W&B run it asked for, without a word).
    """
    given = os.environ.get("WANDB_MODE", "")
    text = given.strip().lower()
    if not text:
        return None
    mode = WANDB_ENV_ALIASES.get(text, text)
    if mode not in WANDB_MODES:
        raise ValueError(
            f"WANDB_MODE={given!r} is not a W&B mode; accepted: {', '.join(WANDB_MODES)} (wandb's own "
            f"{', '.join(WANDB_ENV_ALIASES)} too), or unset it: online with W&B credentials, else offline"
        )
    return mode


def check_wandb_mode(mode: str | None) -> None:
    """Raise ``ValueError`` unless ``mode`` is one of :data:`WANDB_MODES`, or None / ``"auto"`` with a
    valid ``$WANDB_MODE`` (or none): what a command checks before it starts (:func:`fw_agents.runs.tracking.init_wandb` itself
    never stops a run)."""
    if mode in (None, "auto"):
        wandb_mode_from_environment()
    else:
        check_choice("wandb mode", mode, WANDB_MODES)
