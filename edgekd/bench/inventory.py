"""Device inventory: the boards a user benchmarks on, as TOML data.

    [devices.pi4-lab]
    host = "pi4-lab"            # an alias from ~/.ssh/config is enough
    user = "pi"                 # optional: host, port, user and key override the ssh config
    port = 22
    key = "~/.ssh/id_ed25519"
    arch = "aarch64"
    runtimes = ["litert", "onnxruntime"]
    python = "python3"
    workdir = "/tmp/edgekd"
    threads = 4
    env = { OMP_NUM_THREADS = "4" }
    jetson = false
    known_hosts = "~/.ssh/known_hosts"

Read from ``--inventory FILE``, else ``~/.config/edgekd/devices.toml``; ``local`` is built in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from edgekd.errors import ConfigError, InputNotFoundError, UnknownNameError
from edgekd.resources import data_dir
from edgekd.schema import Key, at_least, between, check_table, non_empty

LOCAL = "local"
DEVICE_KEYS = {
    "host": Key("str", required=True, check=non_empty),
    "port": Key("int", check=between(1, 65535)),
    "user": Key("str", check=non_empty),
    "key": Key("str", check=non_empty),
    "arch": Key("str"),
    "runtimes": Key("str-list"),
    "python": Key("str", check=non_empty),
    "workdir": Key("str", check=non_empty),
    "threads": Key("int", check=at_least(1)),
    "env": Key("str-map"),
    "jetson": Key("bool"),
    "known_hosts": Key("str", check=non_empty),
    "description": Key("str"),
    "connect_timeout": Key("number", check=at_least(0.1)),
    "keepalive_s": Key("number", check=at_least(0.1)),
}


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    host: str | None = None  # None only for the built-in local device
    port: int | None = None
    user: str | None = None
    key: str | None = None
    arch: str | None = None
    runtimes: tuple[str, ...] = ()
    python: str = "python3"
    workdir: str = "/tmp/edgekd"
    threads: int | None = None
    env: tuple[tuple[str, str], ...] = ()
    jetson: bool = False
    known_hosts: str | None = None  # None: ~/.ssh/known_hosts
    description: str = ""
    connect_timeout: float = 10.0
    keepalive_s: float = 5.0
    source: str = field(default="", compare=False)

    @property
    def is_local(self) -> bool:
        return self.host is None


def default_inventory_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "edgekd" / "devices.toml"


def parse_inventory(path: Path) -> dict[str, DeviceSpec]:
    if path.is_dir():
        raise ConfigError(f"device inventory {path} is a folder", "pass the inventory's .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"device inventory {path} is not valid TOML: {e}") from e
    devices = data.get("devices")
    if not isinstance(devices, dict):
        raise ConfigError(f"device inventory {path} has no [devices.NAME] tables", "see devices/example.toml")
    out = {}
    for name, d in devices.items():
        check_table(f"device {name!r} in {path}", d, DEVICE_KEYS, f"see {example_inventory()}")
        if name == LOCAL:
            raise ConfigError(f"{path} defines a device named 'local', which is built in", "choose another name")
        env = d.get("env", {})
        out[name] = DeviceSpec(
            name=name,
            host=str(d["host"]),
            port=d.get("port"),
            user=d.get("user"),
            key=d.get("key"),
            arch=d.get("arch"),
            runtimes=tuple(d.get("runtimes", ())),
            python=d.get("python", "python3"),
            workdir=d.get("workdir", "/tmp/edgekd"),
            threads=d.get("threads"),
            env=tuple(sorted(env.items())),
            jetson=bool(d.get("jetson", False)),
            known_hosts=d.get("known_hosts"),
            description=d.get("description", ""),
            connect_timeout=float(d.get("connect_timeout", 10.0)),
            keepalive_s=float(d.get("keepalive_s", 5.0)),
            source=str(path),
        )
    return out


def load_inventory(path: str | Path | None = None) -> dict[str, DeviceSpec]:
    """The built-in local device plus the user's inventory (``path``, or the default file if present)."""
    devices = {LOCAL: DeviceSpec(LOCAL, description="this machine")}
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise InputNotFoundError(f"device inventory {p} does not exist")
        devices.update(parse_inventory(p))
    elif default_inventory_path().exists():
        devices.update(parse_inventory(default_inventory_path()))
    return devices


def example_inventory() -> Path:
    return data_dir("devices") / "example.toml"


def get_device_spec(name: str, inventory: str | Path | None = None) -> DeviceSpec:
    devices = load_inventory(inventory)
    if name not in devices:
        raise UnknownNameError(
            "device",
            name,
            list(devices),
            hint=f"known devices: {', '.join(sorted(devices))}; add it to "
            f"{inventory or default_inventory_path()} (format: {example_inventory()})",
        )
    return devices[name]
