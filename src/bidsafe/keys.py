"""The secret key shared by pseudonyms, UID remapping and date shifts.

Losing or silently replacing the key would re-label every participant and break longitudinal links, so a
missing key is only ever created when nothing depends on an old one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from bidsafe.errors import BidsafeError, ConfigError
from bidsafe.private import private_write_bytes

KEY_BYTES = 32
KEY_FILENAME = "secret.key"


def create_key(path: str | Path) -> bytes:
    """Create a new random key file (0600). Refuses to overwrite an existing one."""
    path = Path(path)
    if path.exists():
        raise BidsafeError("a key file already exists; refusing to replace it", path)
    key = secrets.token_bytes(KEY_BYTES)
    private_write_bytes(path, key.hex().encode("ascii") + b"\n")
    return key


def load_key(path: str | Path) -> bytes:
    """Read a key file written by `create_key` (hex text)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except FileNotFoundError:
        raise BidsafeError("secret key file not found", path) from None
    except (ValueError, UnicodeDecodeError):
        raise BidsafeError("secret key file is not a hex key written by bidsafe", path) from None
    if len(key) < 16:
        raise BidsafeError("secret key is shorter than 128 bits", path)
    return key


def load_or_create_key(path: str | Path, *, dependents: list[Path] | None = None) -> bytes:
    """Load the key; create it only if no file in `dependents` (e.g. a linkage table) exists yet."""
    path = Path(path)
    if path.exists():
        return load_key(path)
    existing = [p for p in (dependents or []) if Path(p).exists()]
    if existing:
        raise BidsafeError(
            f"secret key is missing but {existing[0].name} exists; restore the key from backup "
            "(a new key would re-label every participant)",
            path,
        )
    return create_key(path)


def resolve_key_path(
    key: str | Path | None = None, private_dir: str | Path | None = None, configfile: str | Path | None = None
) -> Path:
    """Where the secret key is, by the one rule the `bidsafe` commands and the pipeline share.

    `key` (an explicit key file) wins; else `private_dir/secret.key`, the pipeline's key, with `private_dir`
    given directly or read from `configfile` (the site config a run gets with --configfile; a relative
    `private_dir` is relative to the current folder, as for Snakemake). With none of them: refused. There is
    no fallback key elsewhere, so a command can never silently use a key other than the pipeline's (that
    would give the same person other pseudonyms, UIDs and date shifts).
    """
    given = [name for name, value in (("--key", key), ("--private-dir", private_dir),
                                      ("--configfile", configfile)) if value]
    if len(given) > 1:
        raise ConfigError(f"give one of --key, --private-dir and --configfile, not {' and '.join(given)}")
    if key:
        return Path(key)
    if configfile:
        from bidsafe.config import read_config_file

        private_dir = read_config_file(configfile)["private_dir"]
    if private_dir:
        return Path(private_dir) / KEY_FILENAME
    raise ConfigError(
        "no secret key given: pass --configfile SITE.yaml or --private-dir DIR to use the pipeline's key "
        f"(PRIVATE_DIR/{KEY_FILENAME}), or --key FILE for a key file of your own"
    )


def keyed_digest(key: bytes, purpose: str, value: str) -> bytes:
    """HMAC-SHA256 of `value` under `key`, separated by `purpose` so different uses never collide."""
    return hmac.new(key, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()
