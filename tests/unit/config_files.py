"""Config text for the config tests (test_config*.py): a [[connector]] table with any key
left out or added, and two well-formed pins."""


def connector(
    name: str | None = "a",
    listen: str | None = "127.0.0.1:8080",
    upstream: str | None = "example.com:80",
    tls: str | None = "false",
    **extra: str,
) -> str:
    """A [[connector]] table; None leaves a key out, `tls` and `extra` are raw TOML."""
    keys = {"name": name, "listen": listen, "upstream": upstream}
    lines = [f'{k} = "{v}"' for k, v in keys.items() if v is not None]
    lines += [f"{k} = {v}" for k, v in {"tls": tls, **extra}.items() if v is not None]
    return "[[connector]]\n" + "".join(line + "\n" for line in lines)


ONE = connector()  # the smallest valid file

PIN_A = "sha256/" + "A" * 43 + "="
PIN_B = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # SHA-256 of b""
